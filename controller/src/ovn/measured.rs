//! The Northbound as the reconcilers hold it: reads go straight to the replica, and every write
//! is timed into `nb_transaction_seconds` under its [`NbOp`], failed or not (and the group
//! commit's counters, when writes are grouped, published after it). One place measures,
//! so no caller can forget to.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use ovsdb_client::runtime::group::GroupStats;
use portkeeper_engine::MacAddress;

use super::northbound::{
    DhcpSpec, NbError, NbOp, Northbound, ObservedDhcp, ObservedPort, PortSpec, SwitchSpec,
};
use crate::metrics::Metrics;

/// A [`Northbound`] whose writes are measured.
pub struct Measured<N> {
    nb: Arc<N>,
    metrics: Arc<Metrics>,
}

impl<N: Northbound> Measured<N> {
    /// Measures the writes made to `nb` into `metrics`.
    pub fn new(nb: Arc<N>, metrics: Arc<Metrics>) -> Self {
        Measured { nb, metrics }
    }

    async fn timed<T>(
        &self,
        op: NbOp,
        write: impl Future<Output = Result<T, NbError>>,
    ) -> Result<T, NbError> {
        let started = Instant::now();
        let result = write.await;
        self.metrics
            .nb_transaction(op.as_str(), started.elapsed().as_secs_f64());
        if let Some(stats) = self.nb.group_stats() {
            self.metrics.nb_group(stats);
        }
        result
    }
}

impl<N: Northbound> Northbound for Measured<N> {
    fn ready(&self) -> bool {
        self.nb.ready()
    }

    fn ports(&self) -> Vec<ObservedPort> {
        self.nb.ports()
    }

    fn port(&self, name: &str) -> Option<ObservedPort> {
        self.nb.port(name)
    }

    fn ports_on_switch(&self, switch: &str) -> Vec<ObservedPort> {
        self.nb.ports_on_switch(switch)
    }

    fn ip_holders(&self, switch: &str, ip: IpAddr) -> Vec<String> {
        self.nb.ip_holders(switch, ip)
    }

    fn mac_holders(&self, mac: MacAddress) -> Vec<String> {
        self.nb.mac_holders(mac)
    }

    fn subnet_switches(&self) -> Vec<String> {
        self.nb.subnet_switches()
    }

    fn router_port_mac(&self, name: &str) -> Option<MacAddress> {
        self.nb.router_port_mac(name)
    }

    fn group_stats(&self) -> Option<GroupStats> {
        self.nb.group_stats()
    }

    async fn ensure_switch(&self, spec: &SwitchSpec) -> Result<(), NbError> {
        self.timed(NbOp::EnsureSwitch, self.nb.ensure_switch(spec))
            .await
    }

    async fn upsert_port(&self, spec: &PortSpec) -> Result<(), NbError> {
        self.timed(NbOp::UpsertPort, self.nb.upsert_port(spec))
            .await
    }

    async fn delete_port(&self, name: &str) -> Result<(), NbError> {
        self.timed(NbOp::DeletePort, self.nb.delete_port(name))
            .await
    }

    async fn delete_switch(
        &self,
        name: &str,
        router: &str,
        router_port: &str,
    ) -> Result<(), NbError> {
        self.timed(
            NbOp::DeleteSwitch,
            self.nb.delete_switch(name, router, router_port),
        )
        .await
    }

    async fn update_port_options(
        &self,
        name: &str,
        set: &BTreeMap<String, String>,
        remove: &[String],
    ) -> Result<(), NbError> {
        self.timed(
            NbOp::UpdatePortOptions,
            self.nb.update_port_options(name, set, remove),
        )
        .await
    }

    fn dhcp_rows(&self) -> Vec<ObservedDhcp> {
        self.nb.dhcp_rows()
    }

    async fn ensure_dhcp(&self, spec: &DhcpSpec) -> Result<String, NbError> {
        self.timed(NbOp::EnsureDhcp, self.nb.ensure_dhcp(spec))
            .await
    }

    async fn delete_dhcp(&self, uuids: &[String]) -> Result<(), NbError> {
        self.timed(NbOp::DeleteDhcp, self.nb.delete_dhcp(uuids))
            .await
    }

    async fn link_dhcp(
        &self,
        port: &str,
        v4: Option<&str>,
        v6: Option<&str>,
    ) -> Result<(), NbError> {
        self.timed(NbOp::LinkDhcp, self.nb.link_dhcp(port, v4, v6))
            .await
    }
}
