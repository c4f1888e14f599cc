//! The listening socket and the startup line.

use std::io::Write;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, OwnedFd};

use anyhow::Context;
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, SockaddrIn6, SockaddrStorage, bind,
    getsockname, listen, setsockopt, socket, sockopt,
};

use crate::cli::ServeArgs;

/// socket, SO_REUSEADDR, bind, listen: the textbook sequence. The socket gets
/// FD_CLOEXEC only with `--listener-cloexec yes`.
pub fn open(args: &ServeArgs) -> anyhow::Result<(OwnedFd, SocketAddr)> {
    let requested = SocketAddr::new(args.bind, args.port);
    let family = match requested {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let flags = if args.listener_cloexec.yes() {
        SockFlag::SOCK_CLOEXEC
    } else {
        SockFlag::empty()
    };
    let fd = socket(family, SockType::Stream, flags, None).context("socket")?;
    if args.reuseaddr.yes() {
        setsockopt(&fd, sockopt::ReuseAddr, &true).context("setsockopt(SO_REUSEADDR)")?;
    }
    match requested {
        SocketAddr::V4(a) => bind(fd.as_raw_fd(), &SockaddrIn::from(a)),
        SocketAddr::V6(a) => bind(fd.as_raw_fd(), &SockaddrIn6::from(a)),
    }
    .with_context(|| format!("bind {requested}"))?;
    let backlog = Backlog::new(args.backlog).context("backlog")?;
    listen(&fd, backlog).context("listen")?;

    let local: SockaddrStorage = getsockname(fd.as_raw_fd()).context("getsockname")?;
    let bound = if let Some(v4) = local.as_sockaddr_in() {
        SocketAddr::V4(SocketAddrV4::from(*v4))
    } else if let Some(v6) = local.as_sockaddr_in6() {
        SocketAddr::V6(SocketAddrV6::from(*v6))
    } else {
        anyhow::bail!("getsockname: unexpected address family");
    };
    Ok((fd, bound))
}

/// Prints the startup line, the only line the server itself writes to stdout:
/// `forkserver listening on 127.0.0.1:PORT pid PID` (IPv6: `[::1]:PORT`).
pub fn announce(addr: SocketAddr) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "forkserver listening on {addr} pid {}",
        std::process::id()
    )?;
    out.flush()?;
    Ok(())
}
