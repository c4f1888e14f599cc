use aya::programs::TracePoint;
fn main() -> anyhow::Result<()> {
    let mut bpf = aya::Ebpf::load(aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/forkwatch")))?;
    let p: &mut TracePoint = bpf.program_mut("hello").unwrap().try_into()?;
    p.load()?;
    p.attach("syscalls", "sys_enter_close")?;
    println!("ok");
    Ok(())
}
