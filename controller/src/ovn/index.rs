//! The Northbound replica indexed by what allocation asks: a port by name, the switch holding a
//! port, and the ports holding an IP or a MAC. Without it every claim decoded every port of the
//! switch (and, for the MAC check, of every switch), which made a burst of N pods cost O(N²).
//!
//! The index follows the `ovsdb-client` cache through its event stream and is brought up to
//! date under the cache's read lock before each use. The cache publishes a change's events
//! while it still holds its write lock, so once a reader holds the read lock every event of
//! the state it sees is already queued: draining the queue then makes the index match that
//! state exactly. A subscriber that fell behind (`Lagged`) rebuilds from the view.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use ovsdb_client::protocol::datum::{Atom, Uuid};
use ovsdb_client::protocol::row::Row;
use ovsdb_client::protocol::table::Table;
use ovsdb_client::runtime::cache::{CacheView, Event, EventStream};
use ovsdb_client::tables::nb::{LogicalSwitch, LogicalSwitchPort};
use portkeeper_engine::MacAddress;

use super::northbound::ObservedPort;

/// The index and the event stream that keeps it current.
pub(super) struct FollowedIndex {
    events: EventStream,
    index: PortIndex,
}

impl FollowedIndex {
    /// An empty index fed by `events`, subscribed before the cache's first load (or followed
    /// by a [`FollowedIndex::sync`] that finds it lagging).
    pub(super) fn new(events: EventStream) -> Self {
        Self {
            events,
            index: PortIndex::default(),
        }
    }

    /// Applies every queued change and returns the index; the caller must hold `view` (see
    /// the module docs).
    pub(super) fn sync(&mut self, view: &CacheView<'_>) -> &PortIndex {
        let mut lagged = false;
        while let Some(event) = self.events.try_recv() {
            match event {
                Event::Lagged { .. } => lagged = true,
                _ if lagged => {}
                Event::Insert { table, row } => self.index.put(&table, &row, None),
                Event::Update { table, old, new } => self.index.put(&table, &new, Some(&old)),
                Event::Delete { table, row } => self.index.remove(&table, &row),
                Event::Synced { .. } => {}
            }
        }
        if lagged {
            self.index = PortIndex::read(view);
        }
        &self.index
    }
}

/// Ports and switches by the keys allocation looks up.
#[derive(Default)]
pub(super) struct PortIndex {
    /// Every port, decoded once; `switch` is filled in on the way out.
    ports: HashMap<Uuid, Arc<ObservedPort>>,
    by_name: HashMap<String, Uuid>,
    by_ip: HashMap<IpAddr, Vec<Uuid>>,
    by_mac: HashMap<MacAddress, Vec<Uuid>>,
    /// Switch name by uuid, and uuids by name (names are not unique in the schema).
    switches: HashMap<Uuid, String>,
    switches_by_name: HashMap<String, Vec<Uuid>>,
    /// The switch each port belongs to, and each switch's ports.
    switch_of: HashMap<Uuid, Uuid>,
    members: HashMap<Uuid, HashSet<Uuid>>,
}

impl PortIndex {
    /// The index of everything in `view`.
    fn read(view: &CacheView<'_>) -> Self {
        let mut index = Self::default();
        for (_, row) in view.iter(LogicalSwitchPort::TABLE) {
            index.put(LogicalSwitchPort::TABLE, row, None);
        }
        for (_, row) in view.iter(LogicalSwitch::TABLE) {
            index.put(LogicalSwitch::TABLE, row, None);
        }
        index
    }

    fn put(&mut self, table: &str, row: &Row, old: Option<&Row>) {
        match table {
            LogicalSwitchPort::TABLE => {
                if let Some(old) = old {
                    self.remove_port(old);
                }
                self.insert_port(row);
            }
            LogicalSwitch::TABLE => self.put_switch(row, old),
            _ => {}
        }
    }

    fn remove(&mut self, table: &str, row: &Row) {
        match table {
            LogicalSwitchPort::TABLE => self.remove_port(row),
            LogicalSwitch::TABLE => self.remove_switch(row),
            _ => {}
        }
    }

    fn insert_port(&mut self, row: &Row) {
        let Ok(port) = LogicalSwitchPort::from_row(row) else {
            return;
        };
        let uuid = port.uuid;
        let observed = ObservedPort {
            name: port.name,
            switch: String::new(),
            kind: port.type_,
            addresses: port.addresses.into_iter().collect(),
            external_ids: port.external_ids,
            options: port.options,
            dhcpv4_options: port.dhcpv4_options.map(|u| u.to_string()),
            dhcpv6_options: port.dhcpv6_options.map(|u| u.to_string()),
        };
        for (mac, ips) in observed.bindings() {
            if let Some(mac) = mac {
                add(&mut self.by_mac, mac, uuid);
            }
            for ip in ips {
                add(&mut self.by_ip, ip, uuid);
            }
        }
        self.by_name.insert(observed.name.clone(), uuid);
        self.ports.insert(uuid, Arc::new(observed));
    }

    fn remove_port(&mut self, row: &Row) {
        let Some(uuid) = row.uuid() else { return };
        let Some(port) = self.ports.remove(&uuid) else {
            return;
        };
        for (mac, ips) in port.bindings() {
            if let Some(mac) = mac {
                drop_from(&mut self.by_mac, &mac, uuid);
            }
            for ip in ips {
                drop_from(&mut self.by_ip, &ip, uuid);
            }
        }
        if self.by_name.get(&port.name) == Some(&uuid) {
            self.by_name.remove(&port.name);
        }
    }

    fn put_switch(&mut self, row: &Row, old: Option<&Row>) {
        let Some(uuid) = row.uuid() else { return };
        let name = text(row, "name");
        if let Some(previous) = self.switches.insert(uuid, name.clone())
            && previous != name
        {
            drop_from(&mut self.switches_by_name, &previous, uuid);
        }
        add(&mut self.switches_by_name, name, uuid);
        let (old_ports, new_ports) = (old.map_or(&[][..], ports_of), ports_of(row));
        // Both are sorted (OVSDB sets are): walk them together, O(old + new) comparisons.
        let (mut i, mut j) = (0, 0);
        while i < old_ports.len() || j < new_ports.len() {
            match (old_ports.get(i), new_ports.get(j)) {
                (Some(a), Some(b)) if a == b => (i, j) = (i + 1, j + 1),
                (Some(a), Some(b)) if a > b => {
                    self.join(uuid, b);
                    j += 1;
                }
                (None, Some(b)) => {
                    self.join(uuid, b);
                    j += 1;
                }
                (Some(a), _) => {
                    self.leave(uuid, a);
                    i += 1;
                }
                (None, None) => break,
            }
        }
    }

    fn remove_switch(&mut self, row: &Row) {
        let Some(uuid) = row.uuid() else { return };
        if let Some(name) = self.switches.remove(&uuid) {
            drop_from(&mut self.switches_by_name, &name, uuid);
        }
        for port in self.members.remove(&uuid).unwrap_or_default() {
            if self.switch_of.get(&port) == Some(&uuid) {
                self.switch_of.remove(&port);
            }
        }
    }

    fn join(&mut self, switch: Uuid, port: &Atom) {
        if let Some(port) = port.as_uuid() {
            self.switch_of.insert(port, switch);
            self.members.entry(switch).or_default().insert(port);
        }
    }

    fn leave(&mut self, switch: Uuid, port: &Atom) {
        if let Some(port) = port.as_uuid() {
            if self.switch_of.get(&port) == Some(&switch) {
                self.switch_of.remove(&port);
            }
            if let Some(members) = self.members.get_mut(&switch) {
                members.remove(&port);
            }
        }
    }

    fn observed(&self, uuid: &Uuid) -> Option<ObservedPort> {
        let mut port = ObservedPort::clone(self.ports.get(uuid)?);
        port.switch = self
            .switch_of
            .get(uuid)
            .and_then(|s| self.switches.get(s))
            .cloned()
            .unwrap_or_default();
        Some(port)
    }

    /// The uuid of the port named `name`.
    pub(super) fn port_uuid(&self, name: &str) -> Option<Uuid> {
        self.by_name.get(name).copied()
    }

    /// The port named `name`, with its switch.
    pub(super) fn port(&self, name: &str) -> Option<ObservedPort> {
        self.observed(self.by_name.get(name)?)
    }

    /// Every port, with its switch.
    pub(super) fn ports(&self) -> Vec<ObservedPort> {
        self.ports.keys().filter_map(|u| self.observed(u)).collect()
    }

    /// The switch holding the port `port`.
    pub(super) fn switch_of(&self, port: Uuid) -> Option<Uuid> {
        self.switch_of.get(&port).copied()
    }

    /// The first switch named `name`.
    pub(super) fn switch_uuid(&self, name: &str) -> Option<Uuid> {
        self.switches_by_name.get(name)?.first().copied()
    }

    /// The ports of the switches named `switch`.
    pub(super) fn ports_on_switch(&self, switch: &str) -> Vec<ObservedPort> {
        let switches = self.switches_by_name.get(switch).into_iter().flatten();
        switches
            .filter_map(|s| self.members.get(s))
            .flatten()
            .filter_map(|p| self.observed(p))
            .collect()
    }

    /// Names of the ports on a switch named `switch` whose addresses hold `ip`.
    pub(super) fn ip_holders(&self, switch: &str, ip: IpAddr) -> Vec<String> {
        self.holders(self.by_ip.get(&ip), |port| {
            self.switch_of
                .get(&port)
                .and_then(|s| self.switches.get(s))
                .is_some_and(|name| name == switch)
        })
    }

    /// Names of the ports, on any switch, whose addresses hold `mac`.
    pub(super) fn mac_holders(&self, mac: MacAddress) -> Vec<String> {
        self.holders(self.by_mac.get(&mac), |_| true)
    }

    fn holders(&self, uuids: Option<&Vec<Uuid>>, keep: impl Fn(Uuid) -> bool) -> Vec<String> {
        let mut names: Vec<String> = uuids
            .into_iter()
            .flatten()
            .filter(|u| keep(**u))
            .filter_map(|u| Some(self.ports.get(u)?.name.clone()))
            .collect();
        names.sort();
        names
    }
}

fn text(row: &Row, column: &str) -> String {
    row.get(column)
        .and_then(|v| v.as_atom())
        .and_then(|a| a.as_str())
        .unwrap_or_default()
        .to_owned()
}

fn ports_of(row: &Row) -> &[Atom] {
    row.get("ports").map_or(&[], |v| v.set_elements())
}

fn add<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Vec<Uuid>>, key: K, uuid: Uuid) {
    let slot = map.entry(key).or_default();
    if !slot.contains(&uuid) {
        slot.push(uuid);
    }
}

fn drop_from<K, Q>(map: &mut HashMap<K, Vec<Uuid>>, key: &Q, uuid: Uuid)
where
    K: std::borrow::Borrow<Q> + std::hash::Hash + Eq,
    Q: std::hash::Hash + Eq + ?Sized,
{
    if let Some(slot) = map.get_mut(key) {
        slot.retain(|u| *u != uuid);
        if slot.is_empty() {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ovsdb_client::protocol::datum::Value;
    use std::collections::BTreeSet;

    fn uuid(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn port(n: u128, name: &str, addresses: &str) -> Row {
        let mut row = LogicalSwitchPort {
            name: name.into(),
            addresses: BTreeSet::from([addresses.to_owned()]),
            ..Default::default()
        }
        .to_row();
        row.insert("_uuid", Value::uuid(uuid(n)));
        row
    }

    fn switch(n: u128, name: &str, ports: &[u128]) -> Row {
        let mut row = LogicalSwitch {
            name: name.into(),
            ports: ports.iter().map(|p| uuid(*p)).collect(),
            ..Default::default()
        }
        .to_row();
        row.insert("_uuid", Value::uuid(uuid(n)));
        row
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn follows_membership_addresses_and_deletions() {
        let mut index = PortIndex::default();
        let (p1, p2, p3) = (
            port(1, "a.ns", "0a:00:00:00:00:01 10.0.0.1"),
            port(2, "b.ns", "0a:00:00:00:00:02 10.0.0.2 fd00::2"),
            port(3, "legacy", "0a:00:00:00:00:03 10.0.0.1"),
        );
        for p in [&p1, &p2, &p3] {
            index.put(LogicalSwitchPort::TABLE, p, None);
        }
        let net1 = switch(10, "net1", &[1, 2]);
        let net2 = switch(11, "net2", &[3]);
        index.put(LogicalSwitch::TABLE, &net1, None);
        index.put(LogicalSwitch::TABLE, &net2, None);

        // The same IP on two switches: each switch sees only its own holder.
        assert_eq!(index.ip_holders("net1", ip("10.0.0.1")), ["a.ns"]);
        assert_eq!(index.ip_holders("net2", ip("10.0.0.1")), ["legacy"]);
        assert_eq!(index.ip_holders("net1", ip("fd00::2")), ["b.ns"]);
        assert!(index.ip_holders("net1", ip("10.0.0.9")).is_empty());
        let mac = MacAddress::parse("0a:00:00:00:00:03").unwrap();
        assert_eq!(index.mac_holders(mac), ["legacy"]);
        assert_eq!(index.port("b.ns").unwrap().switch, "net1");

        // a.ns leaves net1 and legacy joins it (one update of each switch).
        let net1_after = switch(10, "net1", &[2, 3]);
        index.put(LogicalSwitch::TABLE, &net1_after, Some(&net1));
        let net2_after = switch(11, "net2", &[]);
        index.put(LogicalSwitch::TABLE, &net2_after, Some(&net2));
        assert_eq!(index.ip_holders("net1", ip("10.0.0.1")), ["legacy"]);
        assert_eq!(index.port("a.ns").unwrap().switch, "");
        let names: BTreeSet<String> = index
            .ports_on_switch("net1")
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, BTreeSet::from(["b.ns".into(), "legacy".into()]));

        // An address change moves the port in the IP and MAC maps.
        let p2_after = port(2, "b.ns", "0a:00:00:00:00:22 10.0.0.22");
        index.put(LogicalSwitchPort::TABLE, &p2_after, Some(&p2));
        assert!(index.ip_holders("net1", ip("10.0.0.2")).is_empty());
        assert_eq!(index.ip_holders("net1", ip("10.0.0.22")), ["b.ns"]);
        let old_mac = MacAddress::parse("0a:00:00:00:00:02").unwrap();
        assert!(index.mac_holders(old_mac).is_empty());

        index.remove(LogicalSwitchPort::TABLE, &p3);
        assert!(index.port("legacy").is_none());
        assert!(index.mac_holders(mac).is_empty());
        index.remove(LogicalSwitch::TABLE, &net1_after);
        assert_eq!(index.switch_uuid("net1"), None);
        assert_eq!(index.port("b.ns").unwrap().switch, "");
        assert_eq!(index.ports().len(), 2);
    }

    #[test]
    fn membership_diff_matches_a_fresh_read() {
        // Random-looking membership changes applied as updates end where a fresh read starts.
        let mut index = PortIndex::default();
        for n in 0..40 {
            index.put(
                LogicalSwitchPort::TABLE,
                &port(
                    n,
                    &format!("p{n}"),
                    &format!("0a:00:00:00:00:{n:02x} 10.0.0.{n}"),
                ),
                None,
            );
        }
        let mut previous = switch(100, "net", &[]);
        index.put(LogicalSwitch::TABLE, &previous, None);
        for step in 1..30u128 {
            let members: Vec<u128> = (0..40).filter(|n| (n * 7 + step * 3) % 5 < 2).collect();
            let next = switch(100, "net", &members);
            index.put(LogicalSwitch::TABLE, &next, Some(&previous));
            let got: BTreeSet<String> = index
                .ports_on_switch("net")
                .into_iter()
                .map(|p| p.name)
                .collect();
            let want: BTreeSet<String> = members.iter().map(|n| format!("p{n}")).collect();
            assert_eq!(got, want, "step {step}");
            for n in 0..40 {
                let on = index.ip_holders("net", ip(&format!("10.0.0.{n}")));
                assert_eq!(
                    on.len(),
                    usize::from(members.contains(&n)),
                    "p{n} step {step}"
                );
            }
            previous = next;
        }
    }
}
