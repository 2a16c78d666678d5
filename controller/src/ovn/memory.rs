//! An in-memory Northbound for unit tests: a map of ports, with the same idempotency rules.

use std::collections::BTreeMap;

use parking_lot::Mutex;
use portkeeper_engine::MacAddress;

use super::northbound::{
    DhcpSpec, NbError, Northbound, ObservedDhcp, ObservedPort, PortSpec, SwitchSpec,
};

/// Ports and router ports, in memory.
#[derive(Default)]
pub struct MemoryNb {
    /// Ports by name.
    pub ports: Mutex<BTreeMap<String, ObservedPort>>,
    /// Switches ensured.
    pub switches: Mutex<BTreeMap<String, SwitchSpec>>,
    /// `DHCP_Options` rows by UUID.
    pub dhcp: Mutex<BTreeMap<String, ObservedDhcp>>,
}

impl MemoryNb {
    /// Adds a port as another system (no vendor id) would.
    pub fn add_foreign(&self, name: &str, switch: &str, addresses: &str) {
        self.ports.lock().insert(
            name.to_owned(),
            ObservedPort {
                name: name.to_owned(),
                switch: switch.to_owned(),
                addresses: vec![addresses.to_owned()],
                ..Default::default()
            },
        );
    }
}

impl Northbound for MemoryNb {
    fn ready(&self) -> bool {
        true
    }
    fn ports(&self) -> Vec<ObservedPort> {
        self.ports.lock().values().cloned().collect()
    }
    fn port(&self, name: &str) -> Option<ObservedPort> {
        self.ports.lock().get(name).cloned()
    }
    fn ports_on_switch(&self, switch: &str) -> Vec<ObservedPort> {
        let ports = self.ports.lock();
        ports
            .values()
            .filter(|p| p.switch == switch)
            .cloned()
            .collect()
    }
    fn subnet_switches(&self) -> Vec<String> {
        self.switches.lock().keys().cloned().collect()
    }
    fn router_port_mac(&self, name: &str) -> Option<MacAddress> {
        let switches = self.switches.lock();
        switches
            .values()
            .find(|s| s.router_port == name)
            .map(|s| s.router_port_mac)
    }
    async fn ensure_switch(&self, spec: &SwitchSpec) -> Result<(), NbError> {
        self.switches.lock().insert(spec.name.clone(), spec.clone());
        Ok(())
    }
    async fn upsert_port(&self, spec: &PortSpec) -> Result<(), NbError> {
        let mut ports = self.ports.lock();
        let port = ports.entry(spec.name.clone()).or_default();
        port.name = spec.name.clone();
        port.switch = spec.switch.clone();
        port.addresses = vec![spec.addresses.clone()];
        port.external_ids = spec.external_ids.clone();
        Ok(())
    }
    async fn delete_port(&self, name: &str) -> Result<(), NbError> {
        self.ports.lock().remove(name);
        Ok(())
    }
    async fn delete_switch(
        &self,
        name: &str,
        _router: &str,
        _router_port: &str,
    ) -> Result<(), NbError> {
        self.switches.lock().remove(name);
        self.ports.lock().retain(|_, p| p.switch != name);
        Ok(())
    }
    async fn update_port_options(
        &self,
        name: &str,
        set: &BTreeMap<String, String>,
        remove: &[String],
    ) -> Result<(), NbError> {
        if let Some(port) = self.ports.lock().get_mut(name) {
            port.options.retain(|k, _| !remove.contains(k));
            port.options.extend(set.clone());
        }
        Ok(())
    }
    fn dhcp_rows(&self) -> Vec<ObservedDhcp> {
        self.dhcp.lock().values().cloned().collect()
    }
    async fn ensure_dhcp(&self, spec: &DhcpSpec) -> Result<String, NbError> {
        let mut rows = self.dhcp.lock();
        let uuid = rows
            .values()
            .find(|r| r.scope == spec.scope)
            .map_or_else(|| format!("dhcp-{}", rows.len() + 1), |r| r.uuid.clone());
        rows.insert(
            uuid.clone(),
            ObservedDhcp {
                uuid: uuid.clone(),
                scope: spec.scope.clone(),
                cidr: spec.cidr.clone(),
                options: spec.options.clone(),
            },
        );
        Ok(uuid)
    }
    async fn delete_dhcp(&self, uuids: &[String]) -> Result<(), NbError> {
        self.dhcp.lock().retain(|uuid, _| !uuids.contains(uuid));
        for port in self.ports.lock().values_mut() {
            for pointer in [&mut port.dhcpv4_options, &mut port.dhcpv6_options] {
                if pointer.as_ref().is_some_and(|u| uuids.contains(u)) {
                    *pointer = None;
                }
            }
        }
        Ok(())
    }
    async fn link_dhcp(
        &self,
        port: &str,
        v4: Option<&str>,
        v6: Option<&str>,
    ) -> Result<(), NbError> {
        if let Some(port) = self.ports.lock().get_mut(port) {
            port.dhcpv4_options = v4.map(str::to_owned);
            port.dhcpv6_options = v6.map(str::to_owned);
        }
        Ok(())
    }
}
