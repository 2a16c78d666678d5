//! The node's Open_vSwitch database: attaching the pod's host end to `br-int` and waiting for
//! ovn-controller to bind it, through portkeeper's own OVSDB client (no `ovs-vsctl`).

use crate::cni::{CniError, ErrorCode};
use ovsdb_client::Client;
use ovsdb_client::protocol::datum::{Atom, Uuid, Value};
use ovsdb_client::protocol::operation::{
    Condition, Function, Insert, Mutate, Mutation, Mutator, Operation,
};
use ovsdb_client::protocol::row::Row;
use ovsdb_client::runtime::cache::Event;
use ovsdb_client::tables::vswitch;
use std::collections::BTreeMap;
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
    /// Connects to `remote` (e.g. `unix:/run/openvswitch/db.sock`) and loads the tables the daemon uses.
    pub async fn connect(remote: &str, bridge: &str, timeout: Duration) -> Result<Self, CniError> {
        let client = Client::builder(remote, vswitch::DATABASE)
            .leader_only(false)
            .connect_timeout(timeout)
            .request_timeout(timeout)
            .monitor("Open_vSwitch", &["external_ids", "bridges"])
            .monitor("Bridge", &["name", "ports"])
            .monitor("Port", &["name", "interfaces"])
            .monitor("Interface", &["name", "external_ids"])
            .index("Interface", &["external_ids:iface-id"])
            .connect()
            .await
            .map_err(|e| {
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
            .rows("Open_vSwitch")
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
        let mut ops: Vec<Operation> = Vec::new();
        if !stale.is_empty() {
            ops.push(bridge_ports(
                &self.bridge,
                Mutator::Delete,
                stale.iter().map(|u| Atom::Uuid(*u)),
            ));
        }
        let ids = Value::map(external_ids.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        ops.push(
            Insert::new(
                "Interface",
                Row::new()
                    .with("name", Atom::string(name))
                    .with("external_ids", ids),
            )
            .uuid_name("iface")
            .into(),
        );
        ops.push(
            Insert::new(
                "Port",
                Row::new()
                    .with("name", Atom::string(name))
                    .with("interfaces", Value::set([Atom::named_uuid("iface")])),
            )
            .uuid_name("port")
            .into(),
        );
        ops.push(bridge_ports(
            &self.bridge,
            Mutator::Insert,
            [Atom::named_uuid("port")],
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
        let ops = [bridge_ports(
            &self.bridge,
            Mutator::Delete,
            ports.iter().map(|u| Atom::Uuid(*u)),
        )];
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
        let rows =
            self.client
                .cache()
                .find("Interface", &["name"], &[Value::from(Atom::string(name))])?;
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
                        Some(event) if event.table() == Some("Interface") => break,
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

    fn ensure_bridge(&self) -> Result<(), CniError> {
        let found = self.client.cache().find(
            "Bridge",
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

    fn port_uuids_named(&self, name: &str) -> Vec<Uuid> {
        self.client
            .cache()
            .find("Port", &["name"], &[Value::from(Atom::string(name))])
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
                "Interface",
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
            .rows("Port")
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

fn bridge_ports(
    bridge: &str,
    mutator: Mutator,
    ports: impl IntoIterator<Item = Atom>,
) -> Operation {
    Mutate::new("Bridge")
        .filter(Condition::new("name", Function::Eq, Atom::string(bridge)))
        .mutation(Mutation::new("ports", mutator, Value::set(ports)))
        .into()
}

fn ovs_error(msg: impl Into<String>, e: ovsdb_client::Error) -> CniError {
    let code = if e.is_retriable() {
        ErrorCode::TryAgainLater
    } else {
        ErrorCode::IoFailure
    };
    CniError::new(code, msg).with_details(e)
}
