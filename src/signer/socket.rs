//! The Unix socket the API server calls: bound owner-only, served until shutdown.

use super::service::Service;
use super::{SignerError, proto};

/// Binds the socket: a stale socket file from an earlier run is replaced (anything else at
/// the path is refused), and only the owner may connect (mode 0600).
pub fn bind(path: &std::path::Path) -> Result<tokio::net::UnixListener, SignerError> {
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    let err = |why: String| SignerError::File {
        path: path.into(),
        why,
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|e| err(format!("removing the old socket: {e}")))?
        }
        Ok(_) => {
            return Err(err(
                "exists and is not a socket; refusing to replace it".into()
            ));
        }
        Err(_) => {}
    }
    // The socket is created under a umask that leaves it 0600 from its first instant: no one
    // else can connect before the chmod below (which only repeats it). The umask is the
    // process's; the signer binds once, at start.
    // SAFETY: umask(2) only swaps the process's file-creation mask; it cannot fail.
    let old = unsafe { libc::umask(0o177) };
    let bound = tokio::net::UnixListener::bind(path);
    // SAFETY: as above, restoring the mask that was in force.
    unsafe { libc::umask(old) };
    let l = bound.map_err(|e| err(format!("binding: {e}")))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| err(format!("chmod 0600: {e}")))?;
    Ok(l)
}

/// Serves the gRPC API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::UnixListener,
    service: Service,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(proto::ExternalJWTSignerServer::new(service))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            shutdown,
        )
        .await
}
