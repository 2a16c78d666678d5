//! The plugin-to-daemon protocol: one JSON request per connection, answered by one JSON response.
//!
//! The plugin writes the request and shuts down its write half; the daemon reads to end-of-stream,
//! answers and closes. Both sides cap messages at [`MAX_MESSAGE_BYTES`].

use crate::cni::config::{DEFAULT_PROVIDER, MAX_MTU, MIN_MTU, abstract_name, is_valid_provider};
use crate::cni::invocation::{is_valid_container_id, validate_ifname};
use crate::cni::{AddResult, CniError, Command, ErrorCode, PodRef};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest request or response accepted, so a confused peer cannot make the other side allocate without bound.
pub const MAX_MESSAGE_BYTES: u64 = 1 << 20;

/// A validated ADD, DEL or CHECK as the daemon receives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonRequest {
    /// What to do.
    pub command: Command,
    /// The runtime's container ID; names the host end of the veth.
    pub container_id: String,
    /// The pod's network namespace path.
    pub netns: Option<PathBuf>,
    /// The interface name inside the pod.
    pub ifname: String,
    /// The pod, when the runtime named it.
    pub pod: Option<PodRef>,
    /// MTU from the network configuration.
    pub mtu: Option<u32>,
    /// The network of the interface: `ovn` (primary) or an attachment network's provider. Its
    /// allocation is read from `<provider>.kubernetes.io/...` and its port is that nic's.
    #[serde(default = "primary_provider")]
    pub provider: String,
}

fn primary_provider() -> String {
    DEFAULT_PROVIDER.to_owned()
}

impl DaemonRequest {
    /// Re-checks what the plugin validated, for requests arriving from any root process.
    pub fn validate(&self) -> Result<(), String> {
        if !is_valid_container_id(&self.container_id) {
            return Err(format!("container ID {:?} is not valid", self.container_id));
        }
        validate_ifname(&self.ifname)
            .map_err(|why| format!("interface name {:?} {why}", self.ifname))?;
        if let Some(netns) = &self.netns
            && !netns.is_absolute()
        {
            return Err(format!("netns {} is not an absolute path", netns.display()));
        }
        if let Some(pod) = &self.pod {
            pod.validate().map_err(|e| e.msg)?;
        }
        if !is_valid_provider(&self.provider) {
            return Err(format!("provider {:?} is not valid", self.provider));
        }
        if let Some(mtu) = self.mtu
            && !(MIN_MTU..=MAX_MTU).contains(&mtu)
        {
            return Err(format!("mtu {mtu} is outside {MIN_MTU}..={MAX_MTU}"));
        }
        Ok(())
    }
}

/// The daemon's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DaemonResponse {
    /// ADD succeeded.
    Added(AddResult),
    /// DEL or CHECK succeeded.
    Done,
    /// The command failed; nothing it made is left behind.
    Failed(CniError),
}

/// Sends `request` to the daemon at `socket` and waits up to `timeout` for the answer.
pub fn call(
    socket: &Path,
    request: &DaemonRequest,
    timeout: Duration,
) -> Result<DaemonResponse, CniError> {
    let unreachable = |e: std::io::Error| {
        CniError::new(
            ErrorCode::TryAgainLater,
            format!(
                "cannot reach portkeeper-daemon at {}: is the portkeeper-daemon pod running on this node?",
                socket.display()
            ),
        )
        .with_details(e)
    };
    let io_failure = |e: std::io::Error| {
        CniError::new(
            ErrorCode::IoFailure,
            format!(
                "talking to portkeeper-daemon at {} failed",
                socket.display()
            ),
        )
        .with_details(e)
    };
    let mut stream = match abstract_name(socket) {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr =
                std::os::unix::net::SocketAddr::from_abstract_name(name).map_err(unreachable)?;
            UnixStream::connect_addr(&addr)
        }
        None => UnixStream::connect(socket),
    }
    .map_err(unreachable)?;
    stream.set_read_timeout(Some(timeout)).map_err(io_failure)?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(io_failure)?;
    let body = serde_json::to_vec(request).map_err(|e| {
        CniError::new(
            ErrorCode::DecodingFailure,
            "cannot encode the daemon request",
        )
        .with_details(e)
    })?;
    stream.write_all(&body).map_err(io_failure)?;
    stream
        .shutdown(std::net::Shutdown::Write)
        .map_err(io_failure)?;
    let mut reply = Vec::new();
    stream
        .take(MAX_MESSAGE_BYTES + 1)
        .read_to_end(&mut reply)
        .map_err(|e| {
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) {
                CniError::new(
                    ErrorCode::IoFailure,
                    format!(
                        "portkeeper-daemon did not answer within {} s",
                        timeout.as_secs()
                    ),
                )
                .with_details(e)
            } else {
                io_failure(e)
            }
        })?;
    decode(&reply, "response from portkeeper-daemon")
}

/// Decodes one bounded JSON message, naming `what` in the error.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str) -> Result<T, CniError> {
    if bytes.len() as u64 > MAX_MESSAGE_BYTES {
        return Err(CniError::new(
            ErrorCode::DecodingFailure,
            format!("{what} is larger than {MAX_MESSAGE_BYTES} bytes"),
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        CniError::new(
            ErrorCode::DecodingFailure,
            format!("cannot decode the {what}"),
        )
        .with_details(e)
    })
}

#[cfg(test)]
impl DaemonRequest {
    /// A DEL of container `container_id`'s eth0, naming nothing else.
    pub(crate) fn del_for_test(container_id: &str) -> Self {
        DaemonRequest {
            command: Command::Del,
            container_id: container_id.into(),
            netns: None,
            ifname: "eth0".into(),
            pod: None,
            mtu: None,
            provider: "ovn".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_daemon_is_try_again_later() {
        let dir = tempfile::tempdir().unwrap();
        let req = DaemonRequest::del_for_test("c1");
        let err = call(&dir.path().join("none.sock"), &req, Duration::from_secs(1)).unwrap_err();
        assert_eq!(err.code, ErrorCode::TryAgainLater);
        assert!(err.msg.contains("none.sock"));
    }

    #[test]
    fn request_round_trips_and_oversize_is_refused() {
        let req = DaemonRequest {
            command: Command::Add,
            container_id: "c1".into(),
            netns: Some("/run/netns/p".into()),
            ifname: "eth0".into(),
            pod: Some(PodRef {
                namespace: "ns".into(),
                name: "p".into(),
                uid: None,
            }),
            mtu: Some(1400),
            provider: "ovn".into(),
        };
        let bytes = serde_json::to_vec(&req).unwrap();
        assert_eq!(decode::<DaemonRequest>(&bytes, "request").unwrap(), req);
        let mut older = serde_json::to_value(&req).unwrap();
        older.as_object_mut().unwrap().remove("provider");
        let older = serde_json::to_vec(&older).unwrap();
        assert_eq!(
            decode::<DaemonRequest>(&older, "request").unwrap(),
            req,
            "a plugin that names no provider asks for the primary network"
        );
        assert_eq!(req.validate(), Ok(()));
        for bad in [
            DaemonRequest {
                ifname: "a/b".into(),
                ..req.clone()
            },
            DaemonRequest {
                container_id: "".into(),
                ..req.clone()
            },
            DaemonRequest {
                netns: Some("rel".into()),
                ..req.clone()
            },
            DaemonRequest {
                mtu: Some(1),
                ..req.clone()
            },
            DaemonRequest {
                provider: "Not A Provider".into(),
                ..req.clone()
            },
            DaemonRequest {
                pod: Some(PodRef {
                    namespace: "a;K8S_POD_NAME=x".into(),
                    name: "p".into(),
                    uid: None,
                }),
                ..req.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        let big = vec![b' '; MAX_MESSAGE_BYTES as usize + 1];
        assert_eq!(
            decode::<DaemonRequest>(&big, "request").unwrap_err().code,
            ErrorCode::DecodingFailure
        );
    }
}
