//! Pod sandboxes: one network namespace per pod, and what the agent must remember about it.
//!
//! The record is written before the CNI `ADD` so that a crash in the middle still leaves enough to
//! run `DEL` and remove the namespace later, and it holds the `ADD` result that `CHECK` and `DEL`
//! need (a runtime caches it the same way).

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::multus::AttachedNetwork;
use tokio::process::Command;

/// What the agent knows about one pod's sandbox.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sandbox {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// `ip netns` name of the pod's network namespace.
    pub netns: String,
    pub container_id: String,
    /// The final CNI `ADD` result; `None` while the `ADD` has not completed.
    pub result: Option<Value>,
    /// The attachment networks (Multus's delegates), in the order they are added.
    #[serde(default)]
    pub attachments: Vec<AttachedNetwork>,
}

impl Sandbox {
    pub fn netns_path(&self) -> PathBuf {
        netns_path(&self.netns)
    }
}

/// Sandbox records, one JSON file per pod UID in a folder.
#[derive(Clone, Debug)]
pub struct SandboxStore {
    dir: PathBuf,
}

impl SandboxStore {
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self { dir: dir.into() })
    }

    fn file(&self, uid: &str) -> PathBuf {
        self.dir.join(format!("{uid}.json"))
    }

    pub fn load(&self, uid: &str) -> io::Result<Option<Sandbox>> {
        match std::fs::read(self.file(uid)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(io::Error::other),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes atomically (temporary file, then rename).
    pub fn save(&self, sandbox: &Sandbox) -> io::Result<()> {
        let tmp = self.dir.join(format!(".{}.tmp", sandbox.uid));
        std::fs::write(&tmp, serde_json::to_vec_pretty(sandbox)?)?;
        std::fs::rename(&tmp, self.file(&sandbox.uid))
    }

    pub fn remove(&self, uid: &str) -> io::Result<()> {
        match std::fs::remove_file(self.file(uid)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    pub fn list(&self) -> io::Result<Vec<Sandbox>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if let Some(uid) = name.strip_suffix(".json")
                && let Some(sandbox) = self.load(uid)?
            {
                out.push(sandbox);
            }
        }
        Ok(out)
    }
}

/// Where `ip netns` keeps a named namespace.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// Creates a named network namespace with its loopback up; an existing one is kept.
pub async fn create_netns(name: &str) -> io::Result<()> {
    if !netns_path(name).exists() {
        ip(&["netns", "add", name]).await?;
    }
    ip(&["-n", name, "link", "set", "lo", "up"]).await
}

/// Deletes a named network namespace (and with it every link inside) and its `/etc/netns`
/// files; a missing one is fine.
pub async fn delete_netns(name: &str) -> io::Result<()> {
    if netns_path(name).exists() {
        ip(&["netns", "delete", name]).await?;
    }
    match std::fs::remove_dir_all(netns_etc(name)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The folder whose files `ip netns exec` mounts over `/etc` for the namespace `name`.
pub fn netns_etc(name: &str) -> PathBuf {
    Path::new("/etc/netns").join(name)
}

/// Gives the namespace the CNI result's `dns` as its `resolv.conf`, as a runtime that honours
/// CNI DNS does (real kubelets do not: they write the pod's resolv.conf from its `dnsPolicy`).
/// Commands run with `ip netns exec` (so `pod-exec`) read it as `/etc/resolv.conf`. A result
/// without DNS settings writes nothing.
pub fn write_resolv_conf(name: &str, result: &serde_json::Value) -> io::Result<()> {
    let text = resolv_conf(result);
    if text.is_empty() {
        return Ok(());
    }
    let dir = netns_etc(name);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("resolv.conf"), text)
}

/// A CNI result's `dns` in resolv.conf form.
pub fn resolv_conf(result: &serde_json::Value) -> String {
    let dns = &result["dns"];
    let words = |key: &str| -> Vec<String> {
        dns[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    let mut out = String::new();
    for server in words("nameservers") {
        out.push_str(&format!("nameserver {server}\n"));
    }
    if let Some(domain) = dns["domain"].as_str() {
        out.push_str(&format!("domain {domain}\n"));
    }
    for (key, values) in [("search", words("search")), ("options", words("options"))] {
        if !values.is_empty() {
            out.push_str(&format!("{key} {}\n", values.join(" ")));
        }
    }
    out
}

async fn ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip").args(args).output().await?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_results_dns_becomes_a_resolv_conf() {
        let result = serde_json::json!({"dns": {
            "nameservers": ["10.96.0.10", "fd00::a"],
            "search": ["svc.cluster.local", "cluster.local"],
            "options": ["ndots:5"]
        }});
        assert_eq!(
            resolv_conf(&result),
            "nameserver 10.96.0.10\nnameserver fd00::a\nsearch svc.cluster.local cluster.local\noptions ndots:5\n"
        );
        assert_eq!(resolv_conf(&serde_json::json!({"dns": {}})), "");
    }

    #[test]
    fn store_round_trips_and_lists() {
        let dir = tempfile::tempdir().unwrap();
        let store = SandboxStore::open(dir.path()).unwrap();
        let sandbox = Sandbox {
            namespace: "ns".into(),
            name: "web-0".into(),
            uid: "u1".into(),
            netns: "pk-u1".into(),
            container_id: "c1".into(),
            result: Some(serde_json::json!({"ips": []})),
            attachments: Vec::new(),
        };
        assert_eq!(store.load("u1").unwrap(), None);
        store.save(&sandbox).unwrap();
        assert_eq!(store.load("u1").unwrap(), Some(sandbox.clone()));
        assert_eq!(store.list().unwrap(), vec![sandbox]);
        store.remove("u1").unwrap();
        store.remove("u1").unwrap();
        assert!(store.list().unwrap().is_empty());
    }
}
