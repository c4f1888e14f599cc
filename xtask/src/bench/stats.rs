//! min/median/max and percentiles, as numbers and as report cells.

use serde_json::{Value, json};

#[derive(Clone, Copy, Debug)]
pub struct Summary {
    pub n: usize,
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Summary {
    pub fn of(values: &[f64]) -> Option<Self> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Self {
            n,
            min: v[0],
            median,
            max: v[n - 1],
        })
    }

    pub fn json(&self) -> Value {
        json!({"n": self.n, "min": self.min, "median": self.median, "max": self.max})
    }
}

/// `{"n","min","median","max","values"}`, or null when there is nothing.
pub fn summary_json(values: &[f64]) -> Value {
    match Summary::of(values) {
        Some(s) => {
            let mut j = s.json();
            j["values"] = json!(values);
            j
        }
        None => Value::Null,
    }
}

/// "min / median / max" with `digits` decimals, or "n/a".
pub fn cell(values: &[f64], digits: usize) -> String {
    match Summary::of(values) {
        Some(s) if s.n == 1 => format!("{:.digits$}", s.median),
        Some(s) => format!(
            "{:.digits$} / **{:.digits$}** / {:.digits$}",
            s.min, s.median, s.max
        ),
        None => "n/a".into(),
    }
}

/// Nearest-rank percentile (`p` in 0..=100) of unsorted values.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    Some(v[rank.min(v.len()) - 1])
}

/// Element-wise ratios `a[i] / b[i]` (pairs from the same repetition).
pub fn ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter()
        .zip(b)
        .filter(|(_, y)| **y > 0.0)
        .map(|(x, y)| x / y)
        .collect()
}

/// The median, or NaN.
pub fn median(values: &[f64]) -> f64 {
    Summary::of(values).map_or(f64::NAN, |s| s.median)
}
