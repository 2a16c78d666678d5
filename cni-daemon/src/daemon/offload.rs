//! Transmit checksum offload on the pod's interface, turned off where OVS's userspace datapath
//! carries the pod's frames.
//!
//! A veth offers checksum offload, so the pod's kernel leaves each TCP and UDP checksum unfinished
//! ("partial") for the device. The kernel datapath completes it; OVS's userspace datapath
//! (`datapath_type=netdev`) reads the frame from a packet socket and forwards it as it is, so the
//! receiver drops every segment with a bad checksum: pings pass (the kernel always computes ICMP's
//! checksum) and TCP never connects. Kube-OVN turns the offload off on the container's interface
//! for its userspace datapath for the same reason. It is left on for the kernel datapath, where it
//! works and where turning it off would also turn off segmentation offload.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The bridge datapath type of OVS's userspace datapath.
const USERSPACE_DATAPATH: &str = "netdev";

/// `ETHTOOL_STXCSUM` of `<linux/ethtool.h>`: set transmit checksum offload (all checksum features).
const ETHTOOL_STXCSUM: u32 = 0x17;

/// `struct ethtool_value` of `<linux/ethtool.h>`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// Whether pods on a bridge of this `datapath_type` need transmit checksum offload off.
pub fn needed_for(datapath_type: &str) -> bool {
    datapath_type == USERSPACE_DATAPATH
}

/// Turns transmit checksum offload off on `ifname` of the calling thread's network namespace, as
/// `ethtool -K <ifname> tx off` does (through the ethtool ioctl, which every kernel has).
pub fn disable_tx_checksum(ifname: &str) -> io::Result<()> {
    let name = ifname.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{ifname:?} is not an interface name"),
        ));
    }
    // SAFETY: plain socket(2); the returned descriptor is owned by `fd` from here on.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh, valid descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut value = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: 0,
    };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (to, from) in request.ifr_name.iter_mut().zip(name) {
        *to = *from as libc::c_char;
    }
    request.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
    // SAFETY: `request` names a NUL-terminated interface and points at `value`, both of which
    // outlive the call; SIOCETHTOOL with ETHTOOL_STXCSUM only reads `value`.
    if unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::SIOCETHTOOL,
            &mut request as *mut libc::ifreq,
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_userspace_datapath_needs_it() {
        assert!(needed_for("netdev"));
        assert!(!needed_for("system"));
        assert!(!needed_for(""));
    }

    #[test]
    fn bad_names_are_refused_before_any_ioctl() {
        for name in ["", "a-name-longer-than-ifnamsiz"] {
            let err = disable_tx_checksum(name).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{name:?}");
        }
    }
}
