//! Where a nic's addresses come from, as the caches and the engine say now: the Subnet and
//! IPPool catalog a subnet choice reads ([`crate::plan::choose_target`] decides), whether a
//! subnet has room, and IP resources outside the engine that hold an address.

use std::net::IpAddr;
use std::sync::Arc;

use kube::ResourceExt;
use portkeeper_api::{IPPool, Subnet};
use portkeeper_engine::Engine;

use crate::plan::Catalog;
use crate::stores::Stores;

/// The Subnets and IPPools as the caches hold them now, for one subnet choice.
pub struct Addressing {
    subnets: Vec<Arc<Subnet>>,
    pools: Vec<Arc<IPPool>>,
}

impl Addressing {
    /// A snapshot of the caches.
    pub fn of(stores: &Stores) -> Self {
        Addressing {
            subnets: stores.subnets.state(),
            pools: stores.pools.state(),
        }
    }

    /// The snapshot with objects the caches do not hold yet (created a moment ago) added.
    pub fn with(mut self, subnets: Vec<Arc<Subnet>>, pools: Vec<Arc<IPPool>>) -> Self {
        self.subnets.extend(subnets);
        self.pools.extend(pools);
        self
    }

    /// The catalog a choice reads, with the flag's default subnet.
    pub fn catalog<'a>(&'a self, default_subnet: &'a str) -> Catalog<'a> {
        Catalog {
            subnets: &self.subnets,
            pools: &self.pools,
            default_subnet,
        }
    }
}

/// Whether the engine still has a free address of some family in `subnet`.
pub fn has_room(engine: &Engine, subnet: &str) -> bool {
    engine
        .subnet_status(subnet)
        .is_ok_and(|s| s.v4_available_ips > 0 || s.v6_available_ips > 0)
}

/// Whether the engine still has a free address of some family in IPPool `pool`.
pub fn pool_has_room(engine: &Engine, pool: &str) -> bool {
    engine
        .pool_status(pool)
        .is_ok_and(|s| s.v4_available_ips > 0 || s.v6_available_ips > 0)
}

/// Another IP resource (not `except`) holding `ip` in `subnet`.
pub fn ip_resource_holder(
    stores: &Stores,
    subnet: &str,
    ip: IpAddr,
    except: &str,
) -> Option<String> {
    let text = ip.to_string();
    stores.ips.state().into_iter().find_map(|r| {
        let name = r.name_any();
        (name != except && r.spec.subnet == subnet && r.spec.addresses().contains(&text.as_str()))
            .then_some(name)
    })
}
