//! [`Northbound`] over the `ovsdb-client` crate: reads from its monitored replica, writes as
//! transactions guarded by preconditions on what was read, so a replay after a lost connection
//! or a concurrent writer re-plans instead of duplicating or clobbering.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use ovsdb_client::Client;
use ovsdb_client::protocol::datum::{Uuid, Value};
use ovsdb_client::protocol::operation::{
    Condition, Delete, Insert, Mutate, Mutation, Operation, Update, Wait,
};
use ovsdb_client::protocol::row::Row;
use ovsdb_client::protocol::table::Table;
use ovsdb_client::protocol::table::insert_row;
use ovsdb_client::runtime::cache::CacheView;
use ovsdb_client::runtime::client::Lock;
use ovsdb_client::runtime::group::{GroupCommit, GroupConfig, GroupStats};
use ovsdb_client::runtime::transaction::{new_row_uuid, wait_absent, wait_unchanged};
use ovsdb_client::runtime::transport::TlsConfig;
use ovsdb_client::tables::nb::{
    DhcpOptions, LogicalRouter, LogicalRouterPort, LogicalSwitch, LogicalSwitchPort,
    add_router_port, add_switch_port, remove_router_port, remove_switch_port, schema,
};
use parking_lot::Mutex;
use portkeeper_engine::MacAddress;
use tokio::time::Instant;

use super::index::{FollowedIndex, PortIndex};
use super::northbound::{
    DhcpScope, DhcpSpec, NbError, NbFailure, NbOp, Northbound, ObservedDhcp, ObservedPort,
    PortSpec, SwitchSpec, VENDOR, ids,
};
use crate::term::{NotLeading, Term};

/// How long one write may take, retries included.
const WRITE_DEADLINE: Duration = Duration::from_secs(30);

/// The OVSDB lock the writing replica holds; every one of its transactions asserts it (an OVSDB
/// `<id>`: letters, digits and underscores).
pub const WRITER_LOCK: &str = "portkeeper_controller";

/// OVN Northbound through a leader-only `ovsdb-client` session.
pub struct OvnNorthbound {
    client: Client,
    index: Mutex<FollowedIndex>,
    fence: Option<Fence>,
    group: Option<GroupCommit>,
}

/// What makes a Northbound write this replica's to make: its leader [`Term`], checked before
/// every attempt, and the OVSDB lock [`WRITER_LOCK`], stolen from whoever holds it at the term's
/// first write and asserted by every transaction. A deposed leader's transaction still in flight
/// when the new leader steals the lock fails with `not owner` instead of committing. Every
/// transaction also carries the comment `portkeeper-controller <identity>`, which the database's
/// log keeps (`ovsdb-tool show-log`), so who wrote what can be read afterwards.
///
/// After a reconnection the client asks for the lock again with `lock` (not `steal`): it may
/// wait behind a deposed leader's session until that one goes, and writes fail meanwhile.
pub struct Fence {
    term: Term,
    comment: String,
    lock: tokio::sync::OnceCell<Lock>,
}

impl Fence {
    /// The fence of the replica `identity` leading in `term`.
    pub fn new(term: Term, identity: &str) -> Self {
        Fence {
            term,
            comment: format!("portkeeper-controller {identity}"),
            lock: tokio::sync::OnceCell::new(),
        }
    }

    /// The deadline of a write that may run until `deadline`: the end of the term, if sooner.
    /// Fails outside the term; steals the lock at the term's first write.
    async fn claim(&self, client: &Client, deadline: Instant) -> Result<Instant, NbFailure> {
        let Some(term_end) = self.term.valid_until().filter(|_| self.term.is_valid()) else {
            return Err(NotLeading.into());
        };
        self.lock
            .get_or_try_init(|| client.steal(WRITER_LOCK))
            .await?;
        Ok(deadline.min(term_end))
    }

    /// What goes before and after the operations of every transaction: the lock's `assert`,
    /// and the comment.
    fn envelope(&self) -> (Vec<Operation>, Vec<Operation>) {
        let assert = Operation::Assert {
            lock: WRITER_LOCK.to_owned(),
        };
        (vec![assert], vec![Operation::comment(self.comment.clone())])
    }
}

/// `operations` in `fence`'s envelope, if any; nothing stays nothing.
fn wrap(fence: Option<&Fence>, operations: Vec<Operation>) -> Vec<Operation> {
    match fence {
        Some(fence) if !operations.is_empty() => {
            let (mut wrapped, suffix) = fence.envelope();
            wrapped.extend(operations);
            wrapped.extend(suffix);
            wrapped
        }
        _ => operations,
    }
}

impl OvnNorthbound {
    /// Starts a session to `remotes` (comma-separated `tcp:`/`ssl:`/`unix:`; `ssl:` ones need
    /// `tls`) monitoring the switch and router tables. It connects in the background;
    /// [`Northbound::ready`] says when the replica is loaded from the leader. With `fence`, every
    /// write is the writing replica's only ([`Fence`]); without, writes are unguarded (tests,
    /// tools).
    pub fn start(
        remotes: &str,
        tls: Option<TlsConfig>,
        fence: Option<Fence>,
    ) -> Result<Self, ovsdb_client::Error> {
        let mut builder = Client::builder(remotes, "OVN_Northbound")
            .monitor(LogicalSwitch::TABLE, &[])
            .monitor(LogicalSwitchPort::TABLE, &[])
            .monitor(LogicalRouter::TABLE, &[])
            .monitor(LogicalRouterPort::TABLE, &[])
            .monitor(DhcpOptions::TABLE, &[]);
        if let Some(tls) = tls {
            builder = builder.tls(tls);
        }
        let client = builder.start()?;
        let index = Mutex::new(FollowedIndex::new(client.subscribe()));
        Ok(Self {
            client,
            index,
            fence,
            group: None,
        })
    }

    /// Sends the writes of concurrent callers as one transaction (group commit, see
    /// [`ovsdb_client::runtime::group`]); each write still gets its own result and only its
    /// own error. Needs a tokio runtime.
    pub fn grouped(mut self, config: GroupConfig) -> Self {
        let (prefix, suffix) = self.fence.as_ref().map(Fence::envelope).unwrap_or_default();
        self.group = Some(GroupCommit::new(
            self.client.clone(),
            config,
            prefix,
            suffix,
        ));
        self
    }

    /// Runs `read` on the index brought up to date with `view`.
    fn indexed<T>(&self, view: &CacheView<'_>, read: impl FnOnce(&PortIndex) -> T) -> T {
        read(self.index.lock().sync(view))
    }

    /// Runs `read` on the index, up to date with the cache as it is now.
    fn with_index<T>(&self, read: impl FnOnce(&PortIndex) -> T) -> T {
        let view = self.client.cache().read();
        self.indexed(&view, read)
    }
}

fn by_name(view: &CacheView<'_>, table: &str, name: &str) -> Option<Row> {
    let rows = view.find(table, &["name"], &[name.into()])?;
    rows.first().map(|r| (**r).clone())
}

/// One key of a row's `external_ids`, read without decoding the rest of the row (a switch's
/// `ports` may hold thousands of references).
fn external_id<'r>(row: &'r Row, key: &str) -> Option<&'r str> {
    row.get("external_ids")?.as_map()?.get_str(key)?.as_str()
}

fn router_by_name(view: &CacheView<'_>, name: &str) -> Option<LogicalRouter> {
    view.rows(LogicalRouter::TABLE)
        .iter()
        .filter_map(|r| LogicalRouter::from_row(r).ok())
        .find(|s| s.name == name)
}

/// The update of `columns` of the row `uuid` to their values in `wanted`.
fn update_columns(table: &str, uuid: Uuid, wanted: &Row, columns: &[&str]) -> Operation {
    let mut row = Row::new();
    for column in columns {
        if let Some(value) = wanted.get(column) {
            row.insert(*column, value.clone());
        }
    }
    Update::new(table, row)
        .filter(Condition::uuid_is(uuid))
        .into()
}

const PORT_COLUMNS: [&str; 4] = ["addresses", "port_security", "external_ids", "type"];

impl OvnNorthbound {
    /// The one way anything is written to Northbound: fenced (when there is a [`Fence`]), sent
    /// with concurrent writes (when [grouped](Self::grouped)) and retried until [`WRITE_DEADLINE`] (or the end of the term).
    async fn write(
        &self,
        op: NbOp,
        mut build: impl FnMut(&CacheView<'_>) -> Vec<Operation>,
    ) -> Result<(), NbError> {
        let mut deadline = Instant::now() + WRITE_DEADLINE;
        if let Some(fence) = &self.fence {
            deadline = fence
                .claim(&self.client, deadline)
                .await
                .map_err(|e| NbError::new(op, e))?;
        }
        let result = match &self.group {
            // The group wraps every transaction in the fence's envelope.
            Some(group) => group.transact_with_retry(deadline, build).await,
            None => {
                let fence = self.fence.as_ref();
                self.client
                    .transact_with_retry(deadline, |view| wrap(fence, build(view)))
                    .await
            }
        };
        result.map(drop).map_err(|e| NbError::new(op, e))
    }

    /// Creates the named root row (switch or router) if absent.
    async fn ensure_named_root(
        &self,
        op: NbOp,
        table: &'static str,
        row: Row,
        name: &str,
    ) -> Result<(), NbError> {
        if by_name_scan(&self.client.cache().read(), table, name) {
            return Ok(());
        }
        self.write(op, |view| {
            if by_name_scan(view, table, name) {
                return Vec::new();
            }
            vec![
                wait_absent(table, vec![Condition::eq("name", name)]),
                Insert::new(table, row.clone()).into(),
            ]
        })
        .await
    }

    /// Creates or updates a switch port (never its `options`).
    async fn ensure_switch_port(
        &self,
        op: NbOp,
        switch: &str,
        wanted: LogicalSwitchPort,
    ) -> Result<(), NbError> {
        let wanted_row = wanted.to_row();
        let same = |p: &LogicalSwitchPort| {
            p.addresses == wanted.addresses
                && p.port_security == wanted.port_security
                && p.external_ids == wanted.external_ids
                && p.type_ == wanted.type_
        };
        // The port's row, decoded, and the switch holding it.
        let located = |view: &CacheView<'_>| {
            let row = by_name(view, LogicalSwitchPort::TABLE, &wanted.name)?;
            let port = LogicalSwitchPort::from_row(&row).ok()?;
            let holder = self.indexed(view, |index| index.switch_of(port.uuid));
            Some((row, port, holder))
        };
        let (target, stale) = {
            let view = self.client.cache().read();
            let Some(target) = self.indexed(&view, |index| index.switch_uuid(switch)) else {
                return Err(NbError::new(op, NbFailure::NoSwitch(switch.to_owned())));
            };
            match located(&view) {
                Some((_, port, Some(holder))) if holder == target && same(&port) => {
                    return Ok(());
                }
                Some((_, port, Some(holder))) if holder != target => {
                    (target, Some((holder, port.uuid)))
                }
                _ => (target, None),
            }
        };
        if let Some((holder, port)) = stale {
            self.write(op, |_| remove_switch_port(holder, port, None))
                .await?;
        }
        self.write(op, |view| match located(view) {
            Some((row, port, Some(_))) => {
                let mut ops: Vec<Operation> =
                    wait_unchanged(LogicalSwitchPort::TABLE, &row, &PORT_COLUMNS)
                        .into_iter()
                        .collect();
                ops.push(update_columns(
                    LogicalSwitchPort::TABLE,
                    port.uuid,
                    &wanted_row,
                    &PORT_COLUMNS,
                ));
                ops
            }
            _ => {
                let absent = Wait::absent(
                    LogicalSwitchPort::TABLE,
                    vec![Condition::eq("name", wanted.name.as_str())],
                );
                add_switch_port(target, &wanted, Some(absent))
            }
        })
        .await
    }
}

/// portkeeper's `DHCP_Options` rows, each with the cached row it was read from.
fn dhcp_rows(view: &CacheView<'_>) -> Vec<(Row, ObservedDhcp)> {
    view.rows(DhcpOptions::TABLE)
        .iter()
        .filter_map(|row| {
            let decoded = DhcpOptions::from_row(row).ok()?;
            let scope = DhcpScope::of(&decoded.external_ids)?;
            Some((
                (**row).clone(),
                ObservedDhcp {
                    uuid: decoded.uuid.to_string(),
                    scope,
                    cidr: decoded.cidr,
                    options: decoded.options,
                },
            ))
        })
        .collect()
}

/// The row of `scope`, if it exists.
fn dhcp_row(view: &CacheView<'_>, scope: &DhcpScope) -> Option<(Row, ObservedDhcp)> {
    dhcp_rows(view).into_iter().find(|(_, r)| r.scope == *scope)
}

/// A UUID as OVSDB takes it in a reference column.
fn reference(uuid: Option<&str>) -> Value {
    Value::set(uuid.and_then(|u| u.parse::<Uuid>().ok()))
}

fn by_name_scan(view: &CacheView<'_>, table: &str, name: &str) -> bool {
    view.rows(table).iter().any(|r| {
        r.get("name")
            .and_then(|v| v.as_atom())
            .and_then(|a| a.as_str())
            == Some(name)
    })
}

fn vendor_ids(extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    std::iter::once((ids::VENDOR, VENDOR))
        .chain(extra.iter().copied())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

impl Northbound for OvnNorthbound {
    fn ready(&self) -> bool {
        self.client.is_connected()
    }

    fn ports(&self) -> Vec<ObservedPort> {
        self.with_index(PortIndex::ports)
    }

    fn port(&self, name: &str) -> Option<ObservedPort> {
        self.with_index(|index| index.port(name))
    }

    fn ports_on_switch(&self, switch: &str) -> Vec<ObservedPort> {
        self.with_index(|index| index.ports_on_switch(switch))
    }

    fn ip_holders(&self, switch: &str, ip: IpAddr) -> Vec<String> {
        self.with_index(|index| index.ip_holders(switch, ip))
    }

    fn mac_holders(&self, mac: MacAddress) -> Vec<String> {
        self.with_index(|index| index.mac_holders(mac))
    }

    fn subnet_switches(&self) -> Vec<String> {
        let view = self.client.cache().read();
        view.rows(LogicalSwitch::TABLE)
            .iter()
            .filter(|row| external_id(row, ids::VENDOR) == Some(VENDOR))
            .filter_map(|row| external_id(row, ids::SUBNET).map(str::to_owned))
            .collect()
    }

    fn group_stats(&self) -> Option<GroupStats> {
        self.group.as_ref().map(GroupCommit::stats)
    }

    fn router_port_mac(&self, name: &str) -> Option<MacAddress> {
        let view = self.client.cache().read();
        let row = by_name(&view, LogicalRouterPort::TABLE, name)?;
        MacAddress::parse(&LogicalRouterPort::from_row(&row).ok()?.mac).ok()
    }

    async fn ensure_switch(&self, spec: &SwitchSpec) -> Result<(), NbError> {
        let router = LogicalRouter {
            name: spec.router.clone(),
            external_ids: vendor_ids(&[]),
            ..Default::default()
        };
        self.ensure_named_root(
            NbOp::EnsureSwitch,
            LogicalRouter::TABLE,
            router.to_row(),
            &spec.router,
        )
        .await?;
        let switch = LogicalSwitch {
            name: spec.name.clone(),
            external_ids: vendor_ids(&[(ids::SUBNET, &spec.name)]),
            ..Default::default()
        };
        self.ensure_named_root(
            NbOp::EnsureSwitch,
            LogicalSwitch::TABLE,
            switch.to_row(),
            &spec.name,
        )
        .await?;

        let lrp = LogicalRouterPort {
            name: spec.router_port.clone(),
            mac: spec.router_port_mac.to_string(),
            networks: spec.networks.iter().cloned().collect::<BTreeSet<_>>(),
            external_ids: vendor_ids(&[]),
            ..Default::default()
        };
        let lrp_row = lrp.to_row();
        let columns = ["mac", "networks"];
        self.write(NbOp::EnsureSwitch, |view| {
            let Some(router) = router_by_name(view, &spec.router) else {
                return Vec::new();
            };
            match by_name(view, LogicalRouterPort::TABLE, &lrp.name) {
                None => add_router_port(
                    router.uuid,
                    &lrp,
                    Some(Wait::absent(
                        LogicalRouterPort::TABLE,
                        vec![Condition::eq("name", lrp.name.as_str())],
                    )),
                ),
                Some(row) => {
                    let current = LogicalRouterPort::from_row(&row).ok();
                    if current
                        .as_ref()
                        .is_some_and(|c| c.mac == lrp.mac && c.networks == lrp.networks)
                    {
                        return Vec::new();
                    }
                    let uuid = row.uuid().expect("cached rows have a uuid");
                    wait_unchanged(LogicalRouterPort::TABLE, &row, &columns)
                        .into_iter()
                        .chain([update_columns(
                            LogicalRouterPort::TABLE,
                            uuid,
                            &lrp_row,
                            &columns,
                        )])
                        .collect()
                }
            }
        })
        .await?;

        let router_side = LogicalSwitchPort {
            name: format!("{}-{}", spec.name, spec.router),
            type_: "router".into(),
            addresses: BTreeSet::from(["router".to_owned()]),
            options: BTreeMap::from([("router-port".to_owned(), spec.router_port.clone())]),
            external_ids: vendor_ids(&[(ids::LS, &spec.name)]),
            ..Default::default()
        };
        self.ensure_switch_port(NbOp::EnsureSwitch, &spec.name, router_side)
            .await
    }

    async fn upsert_port(&self, spec: &PortSpec) -> Result<(), NbError> {
        let port = LogicalSwitchPort {
            name: spec.name.clone(),
            addresses: BTreeSet::from([spec.addresses.clone()]),
            port_security: spec.port_security.iter().cloned().collect(),
            external_ids: spec.external_ids.clone(),
            ..Default::default()
        };
        self.ensure_switch_port(NbOp::UpsertPort, &spec.switch, port)
            .await
    }

    async fn delete_port(&self, name: &str) -> Result<(), NbError> {
        self.write(NbOp::DeletePort, |view| {
            let located = self.indexed(view, |index| {
                let port = index.port_uuid(name)?;
                Some((index.switch_of(port)?, port))
            });
            match located {
                Some((switch, port)) => remove_switch_port(switch, port, None),
                None => Vec::new(),
            }
        })
        .await
    }

    async fn delete_switch(
        &self,
        name: &str,
        router: &str,
        router_port: &str,
    ) -> Result<(), NbError> {
        let ours = |row: &Row| external_id(row, ids::VENDOR) == Some(VENDOR);
        self.write(NbOp::DeleteSwitch, |view| {
            let Some(router) = router_by_name(view, router) else {
                return Vec::new();
            };
            match by_name(view, LogicalRouterPort::TABLE, router_port) {
                Some(row) if ours(&row) => {
                    let uuid = row.uuid().expect("cached rows have a uuid");
                    remove_router_port(router.uuid, uuid, None)
                }
                _ => Vec::new(),
            }
        })
        .await?;
        self.write(NbOp::DeleteSwitch, |view| {
            let Some(uuid) = self.indexed(view, |index| index.switch_uuid(name)) else {
                return Vec::new();
            };
            match view.get(LogicalSwitch::TABLE, uuid) {
                Some(row) if ours(&row) => {
                    vec![
                        Delete::new(LogicalSwitch::TABLE)
                            .filter(Condition::uuid_is(uuid))
                            .into(),
                    ]
                }
                _ => Vec::new(),
            }
        })
        .await
    }

    async fn update_port_options(
        &self,
        name: &str,
        set: &BTreeMap<String, String>,
        remove: &[String],
    ) -> Result<(), NbError> {
        // Delete-then-insert in one mutate: `insert` never replaces an existing key, and a
        // replay after a lost reply writes the same result.
        let replaced = remove.iter().chain(set.keys()).map(String::as_str);
        let op: Operation = Mutate::new(LogicalSwitchPort::TABLE)
            .filter(Condition::eq("name", name))
            .mutation(Mutation::delete("options", Value::set(replaced)))
            .mutation(Mutation::insert(
                "options",
                Value::map(set.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
            ))
            .into();
        self.write(NbOp::UpdatePortOptions, |_| vec![op.clone()])
            .await
    }

    fn dhcp_rows(&self) -> Vec<ObservedDhcp> {
        dhcp_rows(&self.client.cache().read())
            .into_iter()
            .map(|(_, r)| r)
            .collect()
    }

    async fn ensure_dhcp(&self, spec: &DhcpSpec) -> Result<String, NbError> {
        const COLUMNS: [&str; 2] = ["cidr", "options"];
        let same = |r: &ObservedDhcp| r.cidr == spec.cidr && r.options == spec.options;
        let wanted = DhcpOptions {
            uuid: new_row_uuid(),
            cidr: spec.cidr.clone(),
            external_ids: spec.scope.external_ids(),
            options: spec.options.clone(),
        };
        let wanted_row = wanted.to_row();
        let current = dhcp_row(&self.client.cache().read(), &spec.scope);
        if !current.as_ref().is_some_and(|(_, r)| same(r)) {
            // A replayed insert fails on its client-chosen uuid and the rebuild finds the row; a
            // row of the same scope written meanwhile by another writer fails the wait.
            let absent = wait_absent(
                DhcpOptions::TABLE,
                vec![Condition::eq(
                    "external_ids",
                    Value::map(spec.scope.external_ids()),
                )],
            );
            self.write(NbOp::EnsureDhcp, |view| match dhcp_row(view, &spec.scope) {
                Some((_, r)) if same(&r) => Vec::new(),
                Some((row, _)) => {
                    let uuid = row.uuid().expect("cached rows have a uuid");
                    wait_unchanged(DhcpOptions::TABLE, &row, &COLUMNS)
                        .into_iter()
                        .chain([update_columns(
                            DhcpOptions::TABLE,
                            uuid,
                            &wanted_row,
                            &COLUMNS,
                        )])
                        .collect()
                }
                None => vec![absent.clone(), insert_row(&wanted, schema()).into()],
            })
            .await?;
        }
        // Read-your-writes: the committed row is in the cache.
        dhcp_row(&self.client.cache().read(), &spec.scope)
            .map(|(_, r)| r.uuid)
            .ok_or_else(|| NbError::new(NbOp::EnsureDhcp, NbFailure::Vanished(spec.scope.clone())))
    }

    async fn delete_dhcp(&self, uuids: &[String]) -> Result<(), NbError> {
        let ops: Vec<Operation> = uuids
            .iter()
            .filter_map(|u| u.parse::<Uuid>().ok())
            .map(|uuid| {
                Delete::new(DhcpOptions::TABLE)
                    .filter(Condition::uuid_is(uuid))
                    .into()
            })
            .collect();
        if ops.is_empty() {
            return Ok(());
        }
        self.write(NbOp::DeleteDhcp, |_| ops.clone()).await
    }

    async fn link_dhcp(
        &self,
        port: &str,
        v4: Option<&str>,
        v6: Option<&str>,
    ) -> Result<(), NbError> {
        let mut row = Row::new();
        row.insert("dhcpv4_options", reference(v4));
        row.insert("dhcpv6_options", reference(v6));
        let op: Operation = Update::new(LogicalSwitchPort::TABLE, row)
            .filter(Condition::eq("name", port))
            .into();
        self.write(NbOp::LinkDhcp, |_| vec![op.clone()]).await
    }
}
