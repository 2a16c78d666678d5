//! A DHCP client in a pod's (or a VM's) network namespace, as a guest would run one at boot:
//! busybox's `udhcpc` asks for a lease on `eth0` and reports what it was offered, without
//! applying it. Used to check what OVN's DHCP hands out for a port.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// What the DHCP server offered, as `udhcpc` reports it to its script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The address offered (`yiaddr`).
    pub ip: String,
    /// Option 1, the netmask (`255.255.0.0`).
    pub subnet: String,
    /// Option 3, the routers, space-separated.
    pub router: String,
    /// Option 6, the DNS servers, space-separated.
    pub dns: String,
    /// Option 26, the interface MTU.
    pub mtu: String,
    /// Option 51, the lease time in seconds.
    pub lease: String,
}

/// The script `udhcpc` runs: on `bound` it prints the lease's variables, one `key=value` a line.
const REPORT: &str = "#!/bin/sh\n[ \"$1\" = bound ] || exit 0\n\
    for v in ip subnet router dns mtu lease; do eval \"echo $v=\\$$v\"; done\n";

/// Runs `udhcpc` once on `eth0` in the network namespace `netns` (a path under `/run/netns`):
/// up to five discovers a second apart, requesting the MTU too. `Err` with the client's output
/// when no lease came.
pub fn request_lease(netns: &Path) -> Result<Lease, String> {
    let script = tempfile::Builder::new()
        .prefix("udhcpc-report")
        .tempfile()
        .map_err(|e| format!("script: {e}"))?;
    script
        .as_file()
        .write_all(REPORT.as_bytes())
        .and_then(|()| {
            script
                .as_file()
                .set_permissions(std::fs::Permissions::from_mode(0o700))
        })
        .map_err(|e| format!("script: {e}"))?;
    let name = netns
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("{} is not a named network namespace", netns.display()))?;
    let script_path = script.into_temp_path();
    let out = Command::new("ip")
        .args(["netns", "exec", name, "busybox", "udhcpc"])
        .args([
            "-i", "eth0", "-f", "-q", "-n", "-t", "5", "-T", "1", "-O", "mtu", "-s",
        ])
        .arg(&script_path)
        .output()
        .map_err(|e| {
            format!("run busybox udhcpc (is busybox installed? dev/setup installs it): {e}")
        })?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let vars: BTreeMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    let var = |k: &str| vars.get(k).map(|v| (*v).to_owned());
    match (out.status.success(), var("ip")) {
        (true, Some(ip)) => Ok(Lease {
            ip,
            subnet: var("subnet").unwrap_or_default(),
            router: var("router").unwrap_or_default(),
            dns: var("dns").unwrap_or_default(),
            mtu: var("mtu").unwrap_or_default(),
            lease: var("lease").unwrap_or_default(),
        }),
        _ => Err(format!(
            "udhcpc in {name}: {}\n{text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )),
    }
}
