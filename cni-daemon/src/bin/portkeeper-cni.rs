//! The CNI plugin binary: reads the runtime's environment and stdin, prints a CNI result or error.

use portkeeper_cni::cni::invocation::error_version;
use portkeeper_cni::cni::{CniError, ErrorCode};
use portkeeper_cni::{plugin, protocol};
use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

/// How long the plugin waits for the daemon; the daemon's own bounds (allocation, ovn-installed) are shorter.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(300);

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let read = std::io::stdin()
        .take(protocol::MAX_MESSAGE_BYTES + 1)
        .read_to_end(&mut stdin);
    let outcome = match read {
        Ok(_) => std::panic::catch_unwind(|| {
            plugin::run(
                |k| std::env::var(k).ok(),
                &stdin,
                |socket, request| protocol::call(socket, request, DAEMON_TIMEOUT),
            )
        })
        .unwrap_or_else(|_| {
            failure(
                &stdin,
                CniError::new(
                    ErrorCode::IoFailure,
                    "portkeeper-cni failed unexpectedly; see its stderr",
                ),
            )
        }),
        Err(e) => failure(
            &stdin,
            CniError::new(
                ErrorCode::IoFailure,
                "cannot read the network configuration from stdin",
            )
            .with_details(e),
        ),
    };
    if let Some(json) = outcome.stdout {
        let mut out = std::io::stdout().lock();
        // Nothing useful can be done if stdout is gone; the exit status still tells the runtime.
        let _ = writeln!(out, "{json}");
        let _ = out.flush();
    }
    if outcome.success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn failure(stdin: &[u8], err: CniError) -> plugin::Outcome {
    plugin::Outcome {
        stdout: Some(err.to_json(error_version(stdin).as_str())),
        success: false,
    }
}
