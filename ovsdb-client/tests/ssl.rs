//! The `Client` over ssl against a real ovsdb-server on `pssl:`, with a CA, a server certificate
//! for 127.0.0.1 and a client certificate that the test generates.

mod support;

use std::time::Duration;

use ovsdb_client::Client;
use ovsdb_client::Error;
use ovsdb_client::protocol::operation::Insert;
use ovsdb_client::protocol::table::Table;
use ovsdb_client::runtime::transport::TlsConfig;
use ovsdb_client::tables::nb::LogicalSwitch;
use support::{NB_DB, SslServer};

#[tokio::test]
async fn writes_over_ssl_with_a_client_certificate() {
    let server = SslServer::start();
    let certs = &server.certs;
    let tls = TlsConfig::new(&certs.ca_cert, &certs.client_cert, &certs.client_key);
    let client = Client::builder(&server.remote, NB_DB)
        .tls(tls)
        .connect()
        .await
        .unwrap();

    let switch = LogicalSwitch {
        name: "over-ssl".into(),
        ..Default::default()
    };
    let uuid = client
        .transact(&[Insert::new(LogicalSwitch::TABLE, switch.to_row()).into()])
        .await
        .unwrap()[0]
        .uuid()
        .unwrap();
    assert!(
        client.cache().get(LogicalSwitch::TABLE, uuid).is_some(),
        "read-your-writes over ssl"
    );
    assert_eq!(
        server
            .nbctl(&["--bare", "--columns=name", "list", "Logical_Switch"])
            .trim(),
        "over-ssl"
    );

    // And the other way: what ovn-nbctl writes over ssl reaches the client.
    server.nbctl(&["ls-add", "from-nbctl"]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !client
        .cache()
        .list_typed::<LogicalSwitch>()
        .into_iter()
        .any(|ls| ls.unwrap().name == "from-nbctl")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "ovn-nbctl's switch never reached the cache"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn refuses_a_server_whose_certificate_another_ca_signed() {
    let server = SslServer::start();
    let certs = &server.certs;
    let tls = TlsConfig::new(&certs.other_ca_cert, &certs.client_cert, &certs.client_key);
    let result = Client::builder(&server.remote, NB_DB)
        .tls(tls)
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await;
    match result {
        Err(Error::NotConnected { last_error, .. }) => {
            let why = last_error.unwrap_or_default().to_lowercase();
            assert!(
                why.contains("certificate") || why.contains("issuer"),
                "{why}"
            );
        }
        other => panic!("connected to a server signed by an untrusted CA: {other:?}"),
    }
}
