//! Server-name checking on `ssl:` remotes against a real ovsdb-server whose certificate names
//! only `127.0.0.1`: dialled as `localhost`, the chain is valid but the name is not.

mod support;

use std::time::Duration;

use ovsdb_client::Client;
use ovsdb_client::Error;
use ovsdb_client::runtime::transport::{Remote, TlsConfig};
use support::{NB_DB, SslServer};

fn as_localhost(server: &SslServer) -> String {
    match Remote::parse(&server.remote).expect("fixture remote") {
        Remote::Ssl { port, .. } => format!("ssl:localhost:{port}"),
        other => panic!("not an ssl remote: {other}"),
    }
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused_by_default() {
    let server = SslServer::start();
    let certs = &server.certs;
    let tls = TlsConfig::new(&certs.ca_cert, &certs.client_cert, &certs.client_key);
    let result = Client::builder(&as_localhost(&server), NB_DB)
        .tls(tls)
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await;
    match result {
        Err(Error::NotConnected { last_error, .. }) => {
            let why = last_error.unwrap_or_default();
            assert!(why.contains("not valid for name"), "{why}");
        }
        other => panic!("accepted a certificate for another name: {other:?}"),
    }
}

#[tokio::test]
async fn without_name_checking_the_chain_still_decides() {
    let server = SslServer::start();
    let certs = &server.certs;
    let tls = TlsConfig::new(&certs.ca_cert, &certs.client_cert, &certs.client_key)
        .verify_hostname(false);
    let client = Client::builder(&as_localhost(&server), NB_DB)
        .tls(tls)
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("chain verified, name not checked, as OVS does");
    client.echo().await.expect("echo over ssl");

    // The chain check stays on: a CA that did not sign the server is still refused.
    let untrusted = TlsConfig::new(&certs.other_ca_cert, &certs.client_cert, &certs.client_key)
        .verify_hostname(false);
    let result = Client::builder(&as_localhost(&server), NB_DB)
        .tls(untrusted)
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await;
    assert!(
        matches!(result, Err(Error::NotConnected { .. })),
        "connected through an untrusted CA: {result:?}"
    );
}
