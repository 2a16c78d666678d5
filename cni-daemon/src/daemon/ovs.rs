//! The node's Open_vSwitch database: attaching the pod's host end to `br-int` and waiting for
//! ovn-controller to bind it, through portkeeper's own OVSDB client (no `ovs-vsctl`).

use crate::cni::{CniError, ErrorCode};
use ovsdb_client::Client;
use ovsdb_client::protocol::datum::{Atom, Uuid, Value};
use ovsdb_client::protocol::nonroot::{ParentRef, insert_child, remove_child};
use ovsdb_client::protocol::operation::{Condition, Operation};
use ovsdb_client::protocol::table::insert_row;
use ovsdb_client::runtime::cache::Event;
use ovsdb_client::runtime::transaction::new_row_uuid;
use ovsdb_client::runtime::transport::TlsConfig;
use ovsdb_client::tables::vswitch::{self, Bridge, Interface, OpenVswitch, Port};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// `external_ids` key ovn-controller matches against the logical switch port name.
pub const IFACE_ID: &str = "iface-id";
/// `external_ids` key ovn-controller sets to `"true"` once the port's flows are installed.
pub const OVN_INSTALLED: &str = "ovn-installed";

/// A connection to one node's Open_vSwitch database.
#[derive(Debug, Clone)]
pub struct Ovs {
    client: Client,
    bridge: String,
}

impl Ovs {
    /// Connects to `remote` (e.g. `unix:/run/openvswitch/db.sock`; an `ssl:` one needs `tls`)
    /// and loads the tables the daemon uses.
    pub async fn connect(
        remote: &str,
        bridge: &str,
        timeout: Duration,
        tls: Option<TlsConfig>,
    ) -> Result<Self, CniError> {
        let mut builder = Client::builder(remote, vswitch::DATABASE)
            .leader_only(false)
            .connect_timeout(timeout)
            .request_timeout(timeout)
            .monitor(OpenVswitch::TABLE, &["external_ids", "bridges"])
            .monitor(Bridge::TABLE, &["name", "ports", "datapath_type"])
            .monitor(Port::TABLE, &["name", "interfaces"])
            .monitor(Interface::TABLE, &["name", "external_ids"])
            .index(Interface::TABLE, &["external_ids:iface-id"]);
        if let Some(tls) = tls {
            builder = builder.tls(tls);
        }
        let client = builder.connect().await.map_err(|e| {
            ovs_error(
                format!("cannot connect to the Open_vSwitch database at {remote}"),
                e,
            )
        })?;
        Ok(Self {
            client,
            bridge: bridge.to_owned(),
        })
    }

    /// The chassis name ovn-controller registers this node under (`external_ids:system-id`).
    pub fn system_id(&self) -> Option<String> {
        self.client
            .cache()
            .rows(OpenVswitch::TABLE)
            .iter()
            .find_map(|row| {
                let id = row
                    .get("external_ids")?
                    .as_map()?
                    .get_str("system-id")?
                    .as_str()?;
                Some(id.to_owned())
            })
    }

    /// Adds port and interface `name` to the bridge with `external_ids`, in one transaction. Replaces a
    /// leftover port of the same name, and detaches any other interface claiming the same `iface-id`
    /// (an earlier incarnation of the pod on this node), so ovn-controller binds only the new one.
    pub async fn attach(
        &self,
        name: &str,
        external_ids: &BTreeMap<String, String>,
    ) -> Result<(), CniError> {
        self.ensure_bridge()?;
        let mut stale = self.port_uuids_named(name);
        if let Some(iface_id) = external_ids.get(IFACE_ID) {
            stale.extend(self.ports_claiming(iface_id));
        }
        stale.sort_unstable();
        stale.dedup();
        let iface = Interface {
            uuid: new_row_uuid(),
            name: name.to_owned(),
            external_ids: external_ids.clone(),
            ..Default::default()
        };
        let port = Port {
            uuid: new_row_uuid(),
            name: name.to_owned(),
            interfaces: BTreeSet::from([iface.uuid]),
            ..Default::default()
        };
        let bridge = self.bridge_ports();
        let mut ops: Vec<Operation> = stale
            .iter()
            .flat_map(|old| remove_child(&bridge, *old, None))
            .collect();
        // Interface and Port are not root tables: they live while the bridge references the port.
        ops.push(insert_row(&iface, vswitch::schema()).into());
        ops.extend(insert_child(
            &bridge,
            insert_row(&port, vswitch::schema()),
            None,
        ));
        let results = self
            .client
            .transact(&ops)
            .await
            .map_err(|e| ovs_error(format!("cannot add port {name} to {}", self.bridge), e))?;
        if results.last().and_then(|r| r.count()) != Some(1) {
            return Err(CniError::new(
                ErrorCode::IoFailure,
                format!(
                    "bridge {} disappeared while adding port {name}",
                    self.bridge
                ),
            ));
        }
        Ok(())
    }

    /// Removes port `name` from the bridge (its Port and Interface rows go with it). Returns whether
    /// it was there; removing an absent port succeeds.
    pub async fn detach(&self, name: &str) -> Result<bool, CniError> {
        let ports = self.port_uuids_named(name);
        if ports.is_empty() {
            return Ok(false);
        }
        // Port and Interface are not root tables: unreferenced, the server deletes them.
        let bridge = self.bridge_ports();
        let ops: Vec<Operation> = ports
            .iter()
            .flat_map(|port| remove_child(&bridge, *port, None))
            .collect();
        self.client
            .transact(&ops)
            .await
            .map_err(|e| ovs_error(format!("cannot remove port {name} from {}", self.bridge), e))?;
        Ok(true)
    }

    /// Whether interface `name` exists and ovn-controller has marked it installed.
    pub fn is_installed(&self, name: &str) -> bool {
        self.interface_external_ids(name)
            .is_some_and(|ids| ids.get(OVN_INSTALLED).map(String::as_str) == Some("true"))
    }

    /// The `external_ids` of interface `name`, as the cache holds them; `None` when there is no such interface.
    pub fn interface_external_ids(&self, name: &str) -> Option<BTreeMap<String, String>> {
        let rows = self.client.cache().find(
            Interface::TABLE,
            &["name"],
            &[Value::from(Atom::string(name))],
        )?;
        let map = rows.first()?.get("external_ids")?.as_map()?.clone();
        Some(
            map.iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned())))
                .collect(),
        )
    }

    /// Waits up to `timeout` until ovn-controller sets `ovn-installed="true"` on interface `name`,
    /// following the database's update stream rather than polling.
    pub async fn wait_installed(&self, name: &str, timeout: Duration) -> Result<(), CniError> {
        let mut events = self.client.subscribe();
        let wait = async {
            loop {
                if self.is_installed(name) {
                    return Ok(());
                }
                loop {
                    match events.recv().await {
                        None => {
                            return Err(CniError::new(
                                ErrorCode::IoFailure,
                                "the Open_vSwitch database client stopped",
                            ));
                        }
                        Some(Event::Lagged { .. } | Event::Synced { .. }) => break,
                        Some(event) if event.table() == Some(Interface::TABLE) => break,
                        Some(_) => {}
                    }
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.unwrap_or_else(|_| {
            Err(CniError::new(
                ErrorCode::PortNotInstalled,
                format!(
                    "ovn-controller did not mark port {name} ovn-installed within {} s: check that ovn-controller runs on this node and the logical switch port exists",
                    timeout.as_secs()
                ),
            ))
        })
    }

    /// The bridge's `datapath_type` (`netdev` for OVS's userspace datapath; empty for the default,
    /// the kernel's, and when the bridge is missing).
    pub fn datapath_type(&self) -> String {
        self.client
            .cache()
            .find(
                Bridge::TABLE,
                &["name"],
                &[Value::from(Atom::string(self.bridge.as_str()))],
            )
            .and_then(|rows| {
                let kind = rows.first()?.get("datapath_type")?.as_atom()?.as_str()?;
                Some(kind.to_owned())
            })
            .unwrap_or_default()
    }

    fn ensure_bridge(&self) -> Result<(), CniError> {
        let found = self.client.cache().find(
            Bridge::TABLE,
            &["name"],
            &[Value::from(Atom::string(self.bridge.as_str()))],
        );
        found
            .filter(|rows| !rows.is_empty())
            .map(drop)
            .ok_or_else(|| {
                CniError::new(
                    ErrorCode::IoFailure,
                    format!(
                        "bridge {} does not exist in the node's Open_vSwitch database",
                        self.bridge
                    ),
                )
            })
    }

    /// The bridge's `ports` column, which holds the pod ports.
    fn bridge_ports(&self) -> ParentRef {
        ParentRef {
            table: Bridge::TABLE.to_owned(),
            conditions: vec![Condition::eq("name", Atom::string(self.bridge.as_str()))],
            column: "ports".into(),
        }
    }

    fn port_uuids_named(&self, name: &str) -> Vec<Uuid> {
        self.client
            .cache()
            .find(Port::TABLE, &["name"], &[Value::from(Atom::string(name))])
            .unwrap_or_default()
            .iter()
            .filter_map(|r| r.uuid())
            .collect()
    }

    /// Ports whose interface claims `iface_id`.
    fn ports_claiming(&self, iface_id: &str) -> Vec<Uuid> {
        let cache = self.client.cache();
        let interfaces: Vec<Uuid> = cache
            .find(
                Interface::TABLE,
                &["external_ids:iface-id"],
                &[Value::from(Atom::string(iface_id))],
            )
            .unwrap_or_default()
            .iter()
            .filter_map(|r| r.uuid())
            .collect();
        if interfaces.is_empty() {
            return Vec::new();
        }
        cache
            .rows(Port::TABLE)
            .iter()
            .filter(|port| {
                port.get("interfaces").is_some_and(|set| {
                    set.set_elements()
                        .iter()
                        .any(|i| i.as_uuid().is_some_and(|u| interfaces.contains(&u)))
                })
            })
            .filter_map(|port| port.uuid())
            .collect()
    }
}

fn ovs_error(msg: impl Into<String>, e: ovsdb_client::Error) -> CniError {
    let code = if e.is_retriable() {
        ErrorCode::TryAgainLater
    } else {
        ErrorCode::IoFailure
    };
    CniError::new(code, msg).with_details(e)
}
