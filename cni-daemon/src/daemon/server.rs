//! The daemon's unix socket: root-only by file mode, directory ownership and peer credentials.

use super::{AllocationSource, Daemon};
use crate::cni::config::abstract_name;
use crate::cni::{CniError, ErrorCode};
use crate::protocol::{DaemonRequest, DaemonResponse, MAX_MESSAGE_BYTES, decode};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// Binds `path` with mode 0600 inside a root-owned directory that no one else may write to.
///
/// The directory is created (mode 0700) when missing; a stale socket from an earlier run is replaced.
///
/// `@name` binds an abstract socket instead: it has no file mode, so only the peer-credential check
/// guards it, and it is visible only inside the daemon's network namespace.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(name) = abstract_name(path) {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        let listener = std::os::unix::net::UnixListener::bind_addr(&addr)?;
        listener.set_nonblocking(true)?;
        return UnixListener::from_std(listener);
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the socket path needs a parent directory",
            )
        })?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = std::fs::metadata(dir)?;
    if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} must be owned by root and writable by root only",
                dir.display()
            ),
        ));
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves requests until the listener fails; each connection is handled on its own task.
pub async fn serve<A: AllocationSource>(
    listener: UnixListener,
    daemon: Arc<Daemon<A>>,
) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let daemon = daemon.clone();
        tokio::spawn(async move {
            if let Err(e) = handle_connection(stream, &daemon).await {
                tracing::warn!(error = %e, "CNI connection failed");
            }
        });
    }
}

async fn handle_connection<A: AllocationSource>(
    mut stream: UnixStream,
    daemon: &Daemon<A>,
) -> std::io::Result<()> {
    let peer = stream.peer_cred()?;
    if peer.uid() != 0 {
        tracing::warn!(uid = peer.uid(), pid = ?peer.pid(), "refused a CNI request from a non-root peer");
        return Ok(());
    }
    let mut body = Vec::new();
    (&mut stream)
        .take(MAX_MESSAGE_BYTES + 1)
        .read_to_end(&mut body)
        .await?;
    let response =
        match decode::<DaemonRequest>(&body, "request from portkeeper-cni").and_then(validated) {
            Ok(request) => {
                let span = tracing::info_span!(
                    "cni",
                    command = request.command.as_str(),
                    container = %request.container_id,
                    pod = ?request.pod.as_ref().map(|p| format!("{}/{}", p.namespace, p.name)),
                );
                tracing::Instrument::instrument(handle_logged(daemon, request), span).await
            }
            Err(err) => DaemonResponse::Failed(err),
        };
    let reply = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
    stream.write_all(&reply).await?;
    stream.shutdown().await
}

async fn handle_logged<A: AllocationSource>(
    daemon: &Daemon<A>,
    request: DaemonRequest,
) -> DaemonResponse {
    let started = std::time::Instant::now();
    let response = daemon.handle(request).await;
    let elapsed_ms = started.elapsed().as_millis() as u64;
    match &response {
        DaemonResponse::Failed(err) => tracing::warn!(error = %err, elapsed_ms, "failed"),
        _ => tracing::info!(elapsed_ms, "done"),
    }
    response
}

/// The plugin validates its input, but the socket is the daemon's trust boundary: check again.
fn validated(request: DaemonRequest) -> Result<DaemonRequest, CniError> {
    request
        .validate()
        .map(|()| request)
        .map_err(|why| CniError::new(ErrorCode::InvalidEnvironment, why))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::call;
    use std::path::PathBuf;
    use std::time::Duration;

    #[tokio::test]
    async fn abstract_socket_round_trip() {
        let name = format!("@portkeeper-cni-test-{}", std::process::id());
        let listener = bind(Path::new(&name)).unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut body = Vec::new();
            stream.read_to_end(&mut body).await.unwrap();
            let request: DaemonRequest = decode(&body, "request").unwrap();
            assert_eq!(request.container_id, "c1");
            stream
                .write_all(&serde_json::to_vec(&DaemonResponse::Done).unwrap())
                .await
                .unwrap();
        });
        let req = DaemonRequest::del_for_test("c1");
        let socket = PathBuf::from(name);
        let response =
            tokio::task::spawn_blocking(move || call(&socket, &req, Duration::from_secs(5)))
                .await
                .unwrap();
        assert_eq!(response.unwrap(), DaemonResponse::Done);
        server.await.unwrap();
    }
}
