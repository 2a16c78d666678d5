//! Running code inside a pod's network namespace.
//!
//! A thread's network namespace decides where the sockets it opens live, so each job gets a fresh OS
//! thread that enters the namespace, does its work (netlink, packet sockets) and exits. Tokio's
//! worker and blocking threads are never moved, so the daemon's own sockets stay in the host namespace.

use crate::cni::{CniError, ErrorCode};
use nix::sched::{CloneFlags, setns};
use std::fs::File;
use std::future::Future;
use std::path::Path;

/// An open handle on a network namespace, proving it exists while held.
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: String,
}

impl Netns {
    /// Opens the namespace at `path` (`CNI_NETNS`). A missing path is error code 3 (unknown container).
    pub fn open(path: &Path) -> Result<Self, CniError> {
        let display = path.display().to_string();
        let file = File::open(path).map_err(|e| {
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                ErrorCode::UnknownContainer
            } else {
                ErrorCode::IoFailure
            };
            CniError::new(
                code,
                format!("cannot open the pod's network namespace {display}"),
            )
            .with_details(e)
        })?;
        Ok(Self {
            file,
            path: display,
        })
    }

    /// The file descriptor, for moving a link into the namespace.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Runs `job` to completion on a fresh thread inside this namespace, within the caller's tokio
    /// runtime (if any), so sockets it opens live in the namespace yet are driven by the caller's
    /// runtime. Blocks the caller: meant for start-up, not for requests.
    pub fn enter_sync<T: Send>(&self, job: impl FnOnce() -> T + Send) -> Result<T, CniError> {
        let runtime = tokio::runtime::Handle::try_current().ok();
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let _context = runtime.as_ref().map(|r| r.enter());
                    setns(&self.file, CloneFlags::CLONE_NEWNET).map_err(|e| {
                        CniError::new(
                            ErrorCode::IoFailure,
                            format!("cannot enter network namespace {}", self.path),
                        )
                        .with_details(e)
                    })?;
                    Ok(job())
                })
                .join()
                .map_err(|_| {
                    CniError::new(
                        ErrorCode::IoFailure,
                        format!("a job in network namespace {} panicked", self.path),
                    )
                })?
        })
    }

    /// Runs the future built by `job` on a current-thread runtime inside this namespace and returns its output.
    pub async fn run<T, F, Fut>(&self, job: F) -> Result<T, CniError>
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, CniError>>,
    {
        let file = self.file.try_clone().map_err(|e| {
            CniError::new(
                ErrorCode::IoFailure,
                "cannot duplicate the network namespace handle",
            )
            .with_details(e)
        })?;
        let path = self.path.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("netns".into())
            .spawn(move || {
                let outcome = enter_and_run(&file, &path, job);
                let _ = tx.send(outcome);
            })
            .map_err(|e| {
                CniError::new(ErrorCode::IoFailure, "cannot start a namespace thread")
                    .with_details(e)
            })?;
        rx.await.map_err(|_| {
            CniError::new(
                ErrorCode::IoFailure,
                format!("the job in network namespace {} panicked", self.path),
            )
        })?
    }
}

fn enter_and_run<T, F, Fut>(file: &File, path: &str, job: F) -> Result<T, CniError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, CniError>>,
{
    setns(file, CloneFlags::CLONE_NEWNET).map_err(|e| {
        CniError::new(
            ErrorCode::IoFailure,
            format!("{path} is not a network namespace that can be entered"),
        )
        .with_details(e)
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            CniError::new(
                ErrorCode::IoFailure,
                "cannot start a runtime in the namespace",
            )
            .with_details(e)
        })?;
    runtime.block_on(job())
}
