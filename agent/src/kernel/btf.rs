//! A small reader for the kernel's BTF (/sys/kernel/btf/vmlinux): enough to
//! find struct member offsets and the argument types of raw tracepoints, so
//! the probes read kernel structures at this kernel's offsets.
//!
//! Written here rather than taken from a crate: aya-obj parses BTF but keeps
//! its type accessors crate-private, btf-rs is LGPL-2.1 (awkward for a
//! statically linked MIT/Apache binary), and the remaining BTF crates are
//! unmaintained. The format is small and stable (see the kernel's
//! Documentation/bpf/btf.rst); only what the agent needs is decoded.

use std::{fs, path::Path};

use thiserror::Error;

/// What can go wrong reading BTF or looking something up in it.
#[derive(Debug, Error)]
pub enum BtfError {
    /// The BTF file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not BTF, or are cut short.
    #[error("malformed BTF: {0}")]
    Malformed(String),
    /// No struct or union of that name.
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    /// The struct exists but has no such member (after looking into anonymous members).
    #[error("kernel BTF: struct {strukt} has no member {member}")]
    NoMember { strukt: String, member: String },
    /// The member is a bitfield, which the probes cannot read with a plain load.
    #[error("kernel BTF: {strukt}.{member} is a bitfield")]
    Bitfield { strukt: String, member: String },
    /// A path went through a member that is not a struct or union.
    #[error("kernel BTF: {strukt}.{member} is not a struct or union")]
    NotAggregate { strukt: String, member: String },
    /// No typedef `btf_trace_<name>`: the kernel has no such raw tracepoint.
    #[error("kernel BTF has no raw tracepoint {0} (no btf_trace_{0})")]
    NoTracepoint(String),
}

const MAGIC: u16 = 0xeb9f;

/// BTF kinds (`BTF_KIND_*`).
mod kind {
    pub const INT: u32 = 1;
    pub const PTR: u32 = 2;
    pub const ARRAY: u32 = 3;
    pub const STRUCT: u32 = 4;
    pub const UNION: u32 = 5;
    pub const ENUM: u32 = 6;
    pub const FWD: u32 = 7;
    pub const TYPEDEF: u32 = 8;
    pub const VOLATILE: u32 = 9;
    pub const CONST: u32 = 10;
    pub const RESTRICT: u32 = 11;
    pub const FUNC: u32 = 12;
    pub const FUNC_PROTO: u32 = 13;
    pub const VAR: u32 = 14;
    pub const DATASEC: u32 = 15;
    pub const FLOAT: u32 = 16;
    pub const DECL_TAG: u32 = 17;
    pub const TYPE_TAG: u32 = 18;
    pub const ENUM64: u32 = 19;
}

#[derive(Debug, Clone)]
struct Member {
    name_off: u32,
    type_id: u32,
    bit_offset: u32,
    bitfield_size: u32,
}

#[derive(Debug, Clone)]
enum Type {
    Void,
    Int {
        name_off: u32,
        size: u32,
    },
    Ptr {
        target: u32,
    },
    Array {
        elem: u32,
        nelems: u32,
    },
    Aggregate {
        is_union: bool,
        name_off: u32,
        size: u32,
        members: Vec<Member>,
    },
    Enum {
        name_off: u32,
        size: u32,
    },
    Fwd {
        name_off: u32,
    },
    Typedef {
        name_off: u32,
        target: u32,
    },
    /// volatile, const, restrict, type tags: transparent for layout.
    Modifier {
        target: u32,
    },
    FuncProto {
        params: Vec<u32>,
    },
    Float {
        name_off: u32,
        size: u32,
    },
    /// Kinds the agent never looks at (functions, variables, sections, tags).
    Other,
}

/// Where a member sits and how big it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// Byte offset from the start of the outermost struct.
    pub offset: u32,
    /// Size in bytes of the member's type.
    pub size: u32,
}

/// Parsed BTF: types by id (id 0 is void) and the string section.
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, BtfError> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| BtfError::Malformed(format!("truncated at byte {off}")))
}

impl Btf {
    /// The running kernel's BTF.
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        Self::from_file(Path::new("/sys/kernel/btf/vmlinux"))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data)
    }

    /// Parses little-endian BTF (the only byte order of the machines forkwatch runs on).
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        if data.len() < 24 {
            return Err(BtfError::Malformed("shorter than the header".into()));
        }
        let magic = u16::from_le_bytes([data[0], data[1]]);
        if magic != MAGIC {
            return Err(BtfError::Malformed(format!("bad magic {magic:#x}")));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let section = |off: usize, len: usize| {
            hdr_len
                .checked_add(off)
                .and_then(|start| Some((start, start.checked_add(len)?)))
                .and_then(|(start, end)| data.get(start..end))
                .ok_or_else(|| BtfError::Malformed("section out of bounds".into()))
        };
        let type_data = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?.to_vec();

        let mut types = vec![Type::Void];
        let mut pos = 0;
        while pos < type_data.len() {
            let (ty, len) = parse_type(type_data, pos)?;
            types.push(ty);
            pos += len;
        }
        Ok(Self { types, strings })
    }

    fn name(&self, off: u32) -> &str {
        let start = off as usize;
        let Some(rest) = self.strings.get(start..) else {
            return "";
        };
        let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    fn get(&self, id: u32) -> Result<&Type, BtfError> {
        self.types
            .get(id as usize)
            .ok_or_else(|| BtfError::Malformed(format!("type id {id} out of range")))
    }

    /// Follows typedefs and modifiers to the underlying type id.
    fn resolve(&self, mut id: u32) -> Result<u32, BtfError> {
        // Bounded: a malformed chain must not loop forever.
        for _ in 0..64 {
            match self.get(id)? {
                Type::Typedef { target, .. } | Type::Modifier { target } => id = *target,
                _ => return Ok(id),
            }
        }
        Err(BtfError::Malformed(format!(
            "typedef chain too long at {id}"
        )))
    }

    /// Size in bytes of a type.
    pub fn size_of(&self, id: u32) -> Result<u32, BtfError> {
        self.size_of_depth(id, 0)
    }

    /// Bounded: corrupt BTF can make arrays of themselves.
    fn size_of_depth(&self, id: u32, depth: u32) -> Result<u32, BtfError> {
        if depth > 32 {
            return Err(BtfError::Malformed(format!("type {id} nests too deep")));
        }
        let id = self.resolve(id)?;
        Ok(match self.get(id)? {
            Type::Int { size, .. }
            | Type::Enum { size, .. }
            | Type::Float { size, .. }
            | Type::Aggregate { size, .. } => *size,
            Type::Ptr { .. } => 8,
            Type::Array { elem, nelems } => self
                .size_of_depth(*elem, depth + 1)?
                .saturating_mul(*nelems),
            _ => 0,
        })
    }

    /// The id of the struct (or union) called `name`, skipping forward declarations.
    pub fn struct_id(&self, name: &str) -> Result<u32, BtfError> {
        self.types
            .iter()
            .position(
                |t| matches!(t, Type::Aggregate { name_off, .. } if self.name(*name_off) == name),
            )
            .map(|i| i as u32)
            .ok_or_else(|| BtfError::NoStruct(name.to_string()))
    }

    /// Size of struct `name`.
    pub fn struct_size(&self, name: &str) -> Result<u32, BtfError> {
        self.size_of(self.struct_id(name)?)
    }

    /// Offset and size of `path` (members separated by dots, e.g.
    /// `"ns.inum"`) inside struct `strukt`. Members of anonymous structs and
    /// unions are found as if they were direct members, as in C.
    pub fn member(&self, strukt: &str, path: &str) -> Result<Field, BtfError> {
        let mut id = self.struct_id(strukt)?;
        let mut offset = 0u32;
        let mut size = 0u32;
        let mut owner = strukt.to_string();
        for (i, part) in path.split('.').enumerate() {
            if i > 0 {
                id = self.resolve(id)?;
                if !matches!(self.get(id)?, Type::Aggregate { .. }) {
                    return Err(BtfError::NotAggregate {
                        strukt: owner,
                        member: part.to_string(),
                    });
                }
            }
            let (bits, member_type) =
                self.find_member(id, part)?
                    .ok_or_else(|| BtfError::NoMember {
                        strukt: owner.clone(),
                        member: part.to_string(),
                    })?;
            if bits % 8 != 0 {
                return Err(BtfError::Bitfield {
                    strukt: owner,
                    member: part.to_string(),
                });
            }
            offset += bits / 8;
            size = self.size_of(member_type)?;
            id = member_type;
            owner = format!("{owner}.{part}");
        }
        Ok(Field { offset, size })
    }

    /// Bit offset and type of member `name` of aggregate `id`, looking
    /// through anonymous members.
    fn find_member(&self, id: u32, name: &str) -> Result<Option<(u32, u32)>, BtfError> {
        self.find_member_depth(id, name, 0)
    }

    fn find_member_depth(
        &self,
        id: u32,
        name: &str,
        depth: u32,
    ) -> Result<Option<(u32, u32)>, BtfError> {
        if depth > 16 {
            return Ok(None);
        }
        let Type::Aggregate { members, .. } = self.get(self.resolve(id)?)? else {
            return Ok(None);
        };
        for m in members {
            let member_name = self.name(m.name_off);
            if member_name == name {
                if m.bitfield_size != 0 {
                    return Err(BtfError::Bitfield {
                        strukt: self.type_name(id),
                        member: name.to_string(),
                    });
                }
                return Ok(Some((m.bit_offset, m.type_id)));
            }
            if member_name.is_empty()
                && let Some((bits, ty)) = self.find_member_depth(m.type_id, name, depth + 1)?
            {
                let Some(at) = m.bit_offset.checked_add(bits) else {
                    return Err(BtfError::Malformed(format!(
                        "member offset overflows in {name}"
                    )));
                };
                return Ok(Some((at, ty)));
            }
        }
        Ok(None)
    }

    /// The parameter types of raw tracepoint `name` (without the leading
    /// `void *` context every `btf_trace_*` prototype starts with), spelled
    /// as C would, e.g. `["struct task_struct *", "bool"]`.
    pub fn raw_tracepoint_params(&self, name: &str) -> Result<Vec<String>, BtfError> {
        let typedef = format!("btf_trace_{name}");
        let id = self
            .types
            .iter()
            .position(
                |t| matches!(t, Type::Typedef { name_off, .. } if self.name(*name_off) == typedef),
            )
            .ok_or_else(|| BtfError::NoTracepoint(name.to_string()))? as u32;
        let ptr = self.resolve(id)?;
        let Type::Ptr { target } = self.get(ptr)? else {
            return Err(BtfError::Malformed(format!("{typedef} is not a pointer")));
        };
        let Type::FuncProto { params } = self.get(self.resolve(*target)?)? else {
            return Err(BtfError::Malformed(format!(
                "{typedef} is not a function pointer"
            )));
        };
        Ok(params.iter().skip(1).map(|&p| self.type_name(p)).collect())
    }

    /// A C spelling of type `id`, for messages and comparisons.
    pub fn type_name(&self, id: u32) -> String {
        self.type_name_depth(id, 0)
    }

    /// Bounded: corrupt BTF can make pointers to themselves.
    fn type_name_depth(&self, id: u32, depth: u32) -> String {
        let Ok(ty) = self.get(id) else {
            return format!("<type {id}>");
        };
        if depth > 32 {
            return "...".into();
        }
        let name = |t: u32| self.type_name_depth(t, depth + 1);
        match ty {
            Type::Void => "void".into(),
            Type::Int { name_off, .. } | Type::Float { name_off, .. } => {
                self.name(*name_off).to_string()
            }
            Type::Typedef { name_off, .. } => self.name(*name_off).to_string(),
            Type::Ptr { target } => format!("{} *", name(*target)),
            Type::Array { elem, nelems } => format!("{}[{nelems}]", name(*elem)),
            Type::Aggregate {
                is_union, name_off, ..
            } => {
                let kw = if *is_union { "union" } else { "struct" };
                format!("{kw} {}", self.name(*name_off))
            }
            Type::Enum { name_off, .. } => format!("enum {}", self.name(*name_off)),
            Type::Fwd { name_off } => format!("struct {}", self.name(*name_off)),
            Type::Modifier { target } => name(*target),
            Type::FuncProto { .. } => "fn".into(),
            Type::Other => format!("<type {id}>"),
        }
    }
}

/// Decodes the type record at `pos`; returns it and its length in bytes.
fn parse_type(b: &[u8], pos: usize) -> Result<(Type, usize), BtfError> {
    let name_off = u32_at(b, pos)?;
    let info = u32_at(b, pos + 4)?;
    let size_or_type = u32_at(b, pos + 8)?;
    let vlen = (info & 0xffff) as usize;
    let kind = (info >> 24) & 0x1f;
    let kind_flag = info >> 31 == 1;
    let body = pos + 12;
    let ty = match kind {
        kind::INT => Type::Int {
            name_off,
            size: size_or_type,
        },
        kind::PTR => Type::Ptr {
            target: size_or_type,
        },
        kind::ARRAY => Type::Array {
            elem: u32_at(b, body)?,
            nelems: u32_at(b, body + 8)?,
        },
        kind::STRUCT | kind::UNION => {
            let mut members = Vec::with_capacity(vlen);
            for i in 0..vlen {
                let m = body + i * 12;
                let raw = u32_at(b, m + 8)?;
                let (bit_offset, bitfield_size) = if kind_flag {
                    (raw & 0x00ff_ffff, raw >> 24)
                } else {
                    (raw, 0)
                };
                members.push(Member {
                    name_off: u32_at(b, m)?,
                    type_id: u32_at(b, m + 4)?,
                    bit_offset,
                    bitfield_size,
                });
            }
            Type::Aggregate {
                is_union: kind == kind::UNION,
                name_off,
                size: size_or_type,
                members,
            }
        }
        kind::ENUM | kind::ENUM64 => Type::Enum {
            name_off,
            size: size_or_type,
        },
        kind::FWD => Type::Fwd { name_off },
        kind::TYPEDEF => Type::Typedef {
            name_off,
            target: size_or_type,
        },
        kind::VOLATILE | kind::CONST | kind::RESTRICT | kind::TYPE_TAG => Type::Modifier {
            target: size_or_type,
        },
        kind::FUNC_PROTO => {
            let mut params = Vec::with_capacity(vlen);
            for i in 0..vlen {
                params.push(u32_at(b, body + i * 8 + 4)?);
            }
            // `void *ctx` of a btf_trace typedef is an explicit first param;
            // a trailing `...` is a param of type 0, kept as void.
            Type::FuncProto { params }
        }
        kind::FLOAT => Type::Float {
            name_off,
            size: size_or_type,
        },
        kind::FUNC | kind::VAR | kind::DATASEC | kind::DECL_TAG => Type::Other,
        other => {
            return Err(BtfError::Malformed(format!(
                "unknown kind {other} at {pos}"
            )));
        }
    };
    let extra = match kind {
        kind::INT | kind::VAR | kind::DECL_TAG => 4,
        kind::ARRAY => 12,
        kind::STRUCT | kind::UNION | kind::DATASEC | kind::ENUM64 => 12 * vlen,
        kind::ENUM | kind::FUNC_PROTO => 8 * vlen,
        _ => 0,
    };
    if body + extra > b.len() {
        return Err(BtfError::Malformed(format!(
            "type at {pos} runs past the end"
        )));
    }
    Ok((ty, 12 + extra))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds BTF blobs for tests, type by type.
    #[derive(Default)]
    pub struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl Builder {
        pub fn new() -> Self {
            Self {
                types: Vec::new(),
                strings: vec![0],
                next_id: 1,
            }
        }

        fn str(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }

        fn push(
            &mut self,
            name: &str,
            kind: u32,
            vlen: u32,
            kflag: bool,
            size_or_type: u32,
        ) -> u32 {
            let name_off = self.str(name);
            let info = (kind << 24) | vlen | if kflag { 1 << 31 } else { 0 };
            for w in [name_off, info, size_or_type] {
                self.types.extend_from_slice(&w.to_le_bytes());
            }
            let id = self.next_id;
            self.next_id += 1;
            id
        }

        pub fn int(&mut self, name: &str, size: u32) -> u32 {
            let id = self.push(name, kind::INT, 0, false, size);
            self.types.extend_from_slice(&(size * 8).to_le_bytes());
            id
        }

        pub fn ptr(&mut self, target: u32) -> u32 {
            self.push("", kind::PTR, 0, false, target)
        }

        pub fn typedef(&mut self, name: &str, target: u32) -> u32 {
            self.push(name, kind::TYPEDEF, 0, false, target)
        }

        /// `members`: (name, type, bit offset, bitfield size).
        pub fn aggregate(
            &mut self,
            name: &str,
            union: bool,
            size: u32,
            members: &[(&str, u32, u32, u32)],
        ) -> u32 {
            let kflag = members.iter().any(|m| m.3 != 0);
            let k = if union { kind::UNION } else { kind::STRUCT };
            let id = self.push(name, k, members.len() as u32, kflag, size);
            for &(n, ty, bits, bf) in members {
                let off = self.str(n);
                let raw = if kflag { (bf << 24) | bits } else { bits };
                for w in [off, ty, raw] {
                    self.types.extend_from_slice(&w.to_le_bytes());
                }
            }
            id
        }

        pub fn func_proto(&mut self, params: &[u32]) -> u32 {
            let id = self.push("", kind::FUNC_PROTO, params.len() as u32, false, 0);
            for &p in params {
                self.types.extend_from_slice(&0u32.to_le_bytes());
                self.types.extend_from_slice(&p.to_le_bytes());
            }
            id
        }

        pub fn build(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&MAGIC.to_le_bytes());
            out.push(1); // version
            out.push(0); // flags
            for w in [
                24u32,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                out.extend_from_slice(&w.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    fn sample() -> Btf {
        let mut b = Builder::new();
        let int = b.int("int", 4);
        let u64_ = b.int("long long unsigned int", 8);
        let inner = b.aggregate("", false, 8, &[("hidden", int, 32, 0)]);
        let ns = b.aggregate("ns_common", false, 8, &[("inum", int, 0, 0)]);
        let task = b.aggregate(
            "task_struct",
            false,
            64,
            &[
                ("pid", int, 0, 0),
                ("", inner, 64, 0),
                ("ns", ns, 128, 0),
                ("flag", int, 192, 3),
                ("start", u64_, 256, 0),
            ],
        );
        let ptask = b.ptr(task);
        let void_ptr = b.ptr(0);
        let proto = b.func_proto(&[void_ptr, ptask, int]);
        let pproto = b.ptr(proto);
        b.typedef("btf_trace_demo", pproto);
        Btf::parse(&b.build()).unwrap()
    }

    #[test]
    fn finds_direct_nested_and_anonymous_members() {
        let btf = sample();
        assert_eq!(
            btf.member("task_struct", "pid").unwrap(),
            Field { offset: 0, size: 4 }
        );
        assert_eq!(
            btf.member("task_struct", "hidden").unwrap(),
            Field {
                offset: 12,
                size: 4
            }
        );
        assert_eq!(
            btf.member("task_struct", "ns.inum").unwrap(),
            Field {
                offset: 16,
                size: 4
            }
        );
        assert_eq!(
            btf.member("task_struct", "start").unwrap(),
            Field {
                offset: 32,
                size: 8
            }
        );
        assert_eq!(btf.struct_size("task_struct").unwrap(), 64);
    }

    #[test]
    fn reports_what_is_missing() {
        let btf = sample();
        assert!(matches!(
            btf.member("task_struct", "nope"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            btf.member("no_such", "pid"),
            Err(BtfError::NoStruct(_))
        ));
        assert!(matches!(
            btf.member("task_struct", "flag"),
            Err(BtfError::Bitfield { .. })
        ));
        assert!(matches!(
            btf.member("task_struct", "pid.x"),
            Err(BtfError::NotAggregate { .. })
        ));
    }

    #[test]
    fn raw_tracepoint_params_skip_the_context() {
        let btf = sample();
        assert_eq!(
            btf.raw_tracepoint_params("demo").unwrap(),
            vec!["struct task_struct *".to_string(), "int".to_string()]
        );
        assert!(matches!(
            btf.raw_tracepoint_params("nope"),
            Err(BtfError::NoTracepoint(_))
        ));
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let good = sample_bytes();
        for len in 0..good.len() {
            let _ = Btf::parse(&good[..len]);
        }
        let mut bad = good.clone();
        bad[0] = 0;
        assert!(Btf::parse(&bad).is_err());
        // Header pointing past the end.
        let mut bad = good;
        bad[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Btf::parse(&bad).is_err());
    }

    fn sample_bytes() -> Vec<u8> {
        let mut b = Builder::new();
        let int = b.int("int", 4);
        b.aggregate("s", false, 4, &[("a", int, 0, 0)]);
        b.build()
    }

    proptest::proptest! {
        /// Random bytes, and valid BTF with random bytes changed: errors,
        /// never a panic, a hang or a stack overflow, in parsing or lookups.
        #[test]
        fn hostile_btf_is_an_error_not_a_panic(
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            flips in proptest::collection::vec((0usize..4096, proptest::prelude::any::<u8>()), 0..16),
        ) {
            let _ = Btf::parse(&noise);
            let mut bytes = sample_blob();
            for (at, v) in flips {
                let n = bytes.len();
                bytes[at % n] = v;
            }
            if let Ok(btf) = Btf::parse(&bytes) {
                let _ = btf.member("task_struct", "pid");
                let _ = btf.member("task_struct", "hidden");
                let _ = btf.member("task_struct", "ns.inum");
                let _ = btf.raw_tracepoint_params("demo");
                for id in 0..16 {
                    let _ = btf.size_of(id);
                    let _ = btf.type_name(id);
                }
            }
        }
    }

    fn sample_blob() -> Vec<u8> {
        let mut b = Builder::new();
        let int = b.int("int", 4);
        let inner = b.aggregate("", false, 8, &[("hidden", int, 32, 0)]);
        let ns = b.aggregate("ns_common", false, 8, &[("inum", int, 0, 0)]);
        let task = b.aggregate(
            "task_struct",
            false,
            64,
            &[("pid", int, 0, 0), ("", inner, 64, 0), ("ns", ns, 128, 0)],
        );
        let ptask = b.ptr(task);
        let void_ptr = b.ptr(0);
        let proto = b.func_proto(&[void_ptr, ptask, int]);
        let pproto = b.ptr(proto);
        b.typedef("btf_trace_demo", pproto);
        b.build()
    }

    /// The running kernel's BTF has what the probes need (readable without root).
    #[test]
    fn running_kernel_has_task_struct() {
        let Ok(btf) = Btf::from_sys_fs() else {
            panic!("/sys/kernel/btf/vmlinux is needed (CONFIG_DEBUG_INFO_BTF=y)");
        };
        let pid = btf.member("task_struct", "pid").unwrap();
        assert_eq!(pid.size, 4);
        let params = btf.raw_tracepoint_params("sched_process_fork").unwrap();
        assert_eq!(params, vec!["struct task_struct *", "struct task_struct *"]);
    }
}
