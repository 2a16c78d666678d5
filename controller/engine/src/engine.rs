//! The engine: subnets behind their own locks, plus the two cluster-wide
//! registries (which subnet a nic key lives in, who holds each MAC).
//!
//! Lock order, always: pool index → subnet map → one subnet → one registry
//! shard → RNG. No path takes them in another order, and no path holds two
//! subnets or two shards at once, so there is no deadlock and unrelated
//! subnets only meet on a registry shard for a few hash-map operations.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use crate::error::{EngineError, MacHolder};
use crate::family::{Family, to_u128};
use crate::hash::FastMap;
use crate::mac::MacAddress;
use crate::request::{Claim, IpRequest, Lease, MacRequest, NicKey, Owner, Record};
use crate::subnet::{
    AddressStatus, Binding, PoolConfig, PoolSpec, Stranded, SubnetConfig, SubnetSpec, SubnetState,
};

const SHARDS: usize = 16;

/// A hash map split into independently locked shards.
struct Sharded<K, V> {
    hasher: foldhash::fast::RandomState,
    shards: Vec<Mutex<FastMap<K, V>>>,
}

impl<K: Hash + Eq + Clone, V: Clone + PartialEq> Sharded<K, V> {
    fn new() -> Self {
        Sharded {
            hasher: foldhash::fast::RandomState::default(),
            shards: (0..SHARDS)
                .map(|_| Mutex::new(FastMap::default()))
                .collect(),
        }
    }

    fn shard(&self, key: &K) -> &Mutex<FastMap<K, V>> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    fn get(&self, key: &K) -> Option<V> {
        self.shard(key).lock().get(key).cloned()
    }

    /// Inserts unless another value is there; returns that value.
    fn claim(&self, key: &K, value: V) -> Result<(), V> {
        let mut shard = self.shard(key).lock();
        match shard.get(key) {
            Some(existing) if *existing != value => Err(existing.clone()),
            _ => {
                shard.insert(key.clone(), value);
                Ok(())
            }
        }
    }

    /// Removes the entry only if it still has `value`.
    fn remove_if(&self, key: &K, value: &V) {
        let mut shard = self.shard(key).lock();
        if shard.get(key) == Some(value) {
            shard.remove(key);
        }
    }
}

/// Everything a rebuild starts from: the specs and the observed bindings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Subnet specs.
    pub subnets: Vec<SubnetSpec>,
    /// IPPool specs.
    pub pools: Vec<PoolSpec>,
    /// Observed bindings, from any sources, in any order.
    pub records: Vec<Record>,
}

/// What a record collided with during a rebuild.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConflictOn {
    /// Both records hold this address in one subnet.
    Address(std::net::IpAddr),
    /// Both records hold this MAC.
    Mac(MacAddress),
    /// The records bind one key to different subnets, addresses or MACs.
    Key,
}

/// Two records that cannot both hold: the one kept (ranked first by source,
/// then by content, independent of input order) and the one left out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordConflict {
    /// The record the engine kept.
    pub kept: Record,
    /// The record the engine left out; the controller must act on it.
    pub rejected: Record,
    /// What they collided on.
    pub on: ConflictOn,
}

/// What a rebuild could not take as given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RebuildReport {
    /// Pairs of records holding one address, MAC or key.
    pub conflicts: Vec<RecordConflict>,
    /// Subnet and pool specs that were refused.
    pub rejected_specs: Vec<EngineError>,
    /// Records that fit nowhere (unknown subnet, a gateway's MAC).
    pub unplaced: Vec<(Record, EngineError)>,
}

/// The address engine. Cheap to share behind an `Arc`; every method takes
/// `&self`.
pub struct Engine {
    pool_index: Mutex<HashMap<String, String>>,
    subnets: RwLock<FastMap<String, Arc<Mutex<SubnetState>>>>,
    keys: Sharded<NicKey, Arc<str>>,
    macs: Sharded<MacAddress, MacHolder>,
    rng: Mutex<Box<dyn RngCore + Send>>,
    generation: AtomicU64,
}

impl Default for Engine {
    fn default() -> Self {
        Engine::new()
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("subnets", &self.subnets.read().len())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An empty engine drawing MACs from the OS-seeded standard RNG.
    pub fn new() -> Engine {
        Engine::with_rng(StdRng::from_os_rng())
    }

    /// An empty engine drawing MACs from `rng` (seed it in tests).
    ///
    /// Generations start at a random point of a 2^62 range so that,
    /// after a restart, a new binding is very unlikely to reuse the
    /// generation of a binding released before it (which a late release
    /// could otherwise match).
    pub fn with_rng(mut rng: impl RngCore + Send + 'static) -> Engine {
        let start = rng.next_u64() >> 2;
        Engine {
            pool_index: Mutex::new(HashMap::new()),
            subnets: RwLock::new(FastMap::default()),
            keys: Sharded::new(),
            macs: Sharded::new(),
            rng: Mutex::new(Box::new(rng)),
            generation: AtomicU64::new(start),
        }
    }

    fn subnet(&self, name: &str) -> Result<Arc<Mutex<SubnetState>>, EngineError> {
        self.subnets
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| EngineError::UnknownSubnet {
                subnet: name.to_owned(),
            })
    }

    /// Creates a subnet or applies a changed spec. Holders are never
    /// dropped: the ones whose address no longer fits (outside the new
    /// CIDR, on the new gateway, of a removed family) are returned.
    pub fn upsert_subnet(&self, spec: &SubnetSpec) -> Result<Vec<Stranded>, EngineError> {
        let config = SubnetConfig::parse(spec)?;
        let existing = self.subnets.read().get(&spec.name).cloned();
        let name = spec.name.clone();
        let gateway_holder = MacHolder::Gateway {
            subnet: name.as_str().into(),
        };
        let reserve_gateway_mac = |mac: Option<MacAddress>| match mac {
            Some(mac) => self
                .macs
                .claim(&mac, gateway_holder.clone())
                .map_err(|holder| EngineError::GatewayMacConflict {
                    subnet: name.clone(),
                    mac,
                    holder,
                }),
            None => Ok(()),
        };
        match existing {
            Some(state) => {
                let mut state = state.lock();
                let old_mac = state.config.spec.gateway_mac;
                reserve_gateway_mac(spec.gateway_mac)?;
                if let Some(old) = old_mac.filter(|m| Some(*m) != spec.gateway_mac) {
                    self.macs.remove_if(&old, &gateway_holder);
                }
                Ok(state.update_config(config))
            }
            None => {
                let mut subnets = self.subnets.write();
                if subnets.contains_key(&spec.name) {
                    drop(subnets);
                    return self.upsert_subnet(spec);
                }
                reserve_gateway_mac(spec.gateway_mac)?;
                subnets.insert(
                    spec.name.clone(),
                    Arc::new(Mutex::new(SubnetState::new(config))),
                );
                Ok(Vec::new())
            }
        }
    }

    /// Removes a subnet that nobody holds addresses in, with its pools.
    pub fn remove_subnet(&self, name: &str) -> Result<(), EngineError> {
        let mut pools = self.pool_index.lock();
        let mut subnets = self.subnets.write();
        let Some(state) = subnets.get(name).cloned() else {
            return Err(EngineError::UnknownSubnet {
                subnet: name.to_owned(),
            });
        };
        let state = state.lock();
        if let Some(example) = state.nics.keys().min() {
            return Err(EngineError::SubnetInUse {
                subnet: name.to_owned(),
                holders: state.nics.len(),
                example: example.clone(),
            });
        }
        if let Some(mac) = state.config.spec.gateway_mac {
            self.macs.remove_if(
                &mac,
                &MacHolder::Gateway {
                    subnet: name.into(),
                },
            );
        }
        pools.retain(|_, subnet| subnet != name);
        subnets.remove(name);
        Ok(())
    }

    /// Creates or replaces an IPPool. Its addresses move out of the
    /// subnet's default pool; holders keep their addresses and count
    /// towards the pool their address lies in.
    pub fn upsert_pool(&self, spec: &PoolSpec) -> Result<(), EngineError> {
        let config = PoolConfig::parse(spec)?;
        let mut pools = self.pool_index.lock();
        if let Some(subnet) = pools.get(&spec.name).filter(|s| **s != spec.subnet) {
            return Err(EngineError::PoolSubnetChanged {
                pool: spec.name.clone(),
                subnet: subnet.clone(),
                requested: spec.subnet.clone(),
            });
        }
        let state = self.subnet(&spec.subnet)?;
        state.lock().upsert_pool(config)?;
        pools.insert(spec.name.clone(), spec.subnet.clone());
        Ok(())
    }

    /// Removes an IPPool; its addresses return to the default pool and its
    /// holders keep them.
    pub fn remove_pool(&self, name: &str) -> Result<(), EngineError> {
        let mut pools = self.pool_index.lock();
        let subnet = pools
            .get(name)
            .cloned()
            .ok_or_else(|| EngineError::UnknownPool {
                pool: name.to_owned(),
            })?;
        self.subnet(&subnet)?.lock().remove_pool(name);
        pools.remove(name);
        Ok(())
    }

    fn check_pools(&self, claim: &Claim) -> Result<(), EngineError> {
        if let IpRequest::Pools(names) = &claim.ip {
            let pools = self.pool_index.lock();
            for name in names {
                match pools.get(name) {
                    None => return Err(EngineError::UnknownPool { pool: name.clone() }),
                    Some(subnet) if *subnet != claim.subnet => {
                        return Err(EngineError::PoolInOtherSubnet {
                            pool: name.clone(),
                            pool_subnet: subnet.clone(),
                            subnet: claim.subnet.clone(),
                        });
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(())
    }

    fn next_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn random_mac(&self) -> MacAddress {
        MacAddress::random(&mut **self.rng.lock())
    }

    /// Binds a nic to addresses (and a MAC) in a subnet, or returns its
    /// current binding when the request is already satisfied. All or
    /// nothing: on error nothing changed.
    pub fn claim(&self, claim: &Claim) -> Result<Lease, EngineError> {
        self.check_pools(claim)?;
        let state = self.subnet(&claim.subnet)?;
        let mut state = state.lock();
        let key = &claim.key;
        let (existing, addr) = self.plan(&state, claim)?;
        let old_mac = existing.as_ref().and_then(|b| b.mac);
        let holder = MacHolder::Nic {
            key: key.clone(),
            subnet: state.name.clone(),
        };
        let mac = match claim.mac {
            MacRequest::None => None,
            MacRequest::Generate if old_mac.is_some() => old_mac,
            MacRequest::Generate => loop {
                let candidate = self.random_mac();
                if self.macs.claim(&candidate, holder.clone()).is_ok() {
                    break Some(candidate);
                }
            },
            MacRequest::Static(mac) => {
                if old_mac != Some(mac) {
                    self.macs.claim(&mac, holder.clone()).map_err(|holder| {
                        EngineError::MacConflict {
                            mac,
                            holder,
                            key: key.clone(),
                        }
                    })?;
                }
                Some(mac)
            }
        };
        let undo_mac = || {
            if let Some(new) = mac.filter(|m| Some(*m) != old_mac) {
                self.macs.remove_if(&new, &holder);
            }
        };
        if existing.is_none()
            && let Err(other) = self.keys.claim(key, state.name.clone())
        {
            undo_mac();
            return Err(EngineError::KeyInOtherSubnet {
                key: key.clone(),
                holder_subnet: other.to_string(),
                subnet: claim.subnet.clone(),
            });
        }
        if let Some(old) = old_mac.filter(|m| Some(*m) != mac) {
            self.macs.remove_if(&old, &holder);
        }
        let unchanged = existing
            .as_ref()
            .is_some_and(|b| b.uid == claim.uid && b.addr == addr && b.mac == mac);
        let binding = match existing {
            Some(b) if unchanged => b,
            _ => Binding {
                uid: claim.uid.clone(),
                generation: self.next_generation(),
                addr,
                mac,
            },
        };
        let lease = state.lease(key, &binding);
        if !unchanged {
            state.commit(key, binding);
        }
        Ok(lease)
    }

    /// What [`Engine::claim`] would grant now, with the same checks and errors, changing nothing:
    /// for admission, which refuses a request before its pod exists. A generated MAC is not
    /// drawn (the lease carries the nic's current MAC, if any).
    pub fn check(&self, claim: &Claim) -> Result<Lease, EngineError> {
        self.check_pools(claim)?;
        let state = self.subnet(&claim.subnet)?;
        let state = state.lock();
        let (existing, addr) = self.plan(&state, claim)?;
        let old_mac = existing.as_ref().and_then(|b| b.mac);
        let mac = match claim.mac {
            MacRequest::None => None,
            MacRequest::Generate => old_mac,
            MacRequest::Static(mac) => {
                let own = MacHolder::Nic {
                    key: claim.key.clone(),
                    subnet: state.name.clone(),
                };
                if let Some(holder) = self.macs.get(&mac).filter(|h| *h != own) {
                    return Err(EngineError::MacConflict {
                        mac,
                        holder,
                        key: claim.key.clone(),
                    });
                }
                Some(mac)
            }
        };
        let binding = Binding {
            uid: claim.uid.clone(),
            generation: existing.map_or(0, |b| b.generation),
            addr,
            mac,
        };
        Ok(state.lease(&claim.key, &binding))
    }

    /// The addresses a claim gets in `state` (its subnet, locked by the caller), and the nic's
    /// binding there now: the part of a claim that decides, shared by claim and check.
    fn plan(
        &self,
        state: &SubnetState,
        claim: &Claim,
    ) -> Result<(Option<Binding>, [Option<u128>; 2]), EngineError> {
        if let Some(other) = self.keys.get(&claim.key).filter(|s| **s != *claim.subnet) {
            return Err(EngineError::KeyInOtherSubnet {
                key: claim.key.clone(),
                holder_subnet: other.to_string(),
                subnet: claim.subnet.clone(),
            });
        }
        let existing = state.nics.get(&claim.key).cloned();
        let addr = state.plan(claim, existing.as_ref())?;
        Ok((existing, addr))
    }

    /// Frees a nic's addresses and MAC if `owner` is its current owner and
    /// generation; a stale release changes nothing and says why. Freed
    /// addresses are reused last, oldest first.
    pub fn release(&self, key: &NicKey, owner: &Owner) -> Result<Lease, EngineError> {
        let subnet = self
            .keys
            .get(key)
            .ok_or_else(|| EngineError::NotHeld { key: key.clone() })?;
        let state = self.subnet(&subnet)?;
        let mut state = state.lock();
        let binding = state.release(key, owner)?;
        let lease = state.lease(key, &binding);
        self.keys.remove_if(key, &subnet);
        if let Some(mac) = binding.mac {
            self.macs.remove_if(
                &mac,
                &MacHolder::Nic {
                    key: key.clone(),
                    subnet,
                },
            );
        }
        Ok(lease)
    }

    /// The nic's current binding, if any.
    pub fn lease(&self, key: &NicKey) -> Option<Lease> {
        let subnet = self.keys.get(key)?;
        let state = self.subnet(&subnet).ok()?;
        let state = state.lock();
        state.nics.get(key).map(|b| state.lease(key, b))
    }

    /// Who holds a MAC, cluster-wide.
    pub fn mac_holder(&self, mac: &MacAddress) -> Option<MacHolder> {
        self.macs.get(mac)
    }

    /// Holders of a subnet whose address no longer fits it.
    pub fn stranded(&self, subnet: &str) -> Result<Vec<Stranded>, EngineError> {
        Ok(self.subnet(subnet)?.lock().stranded())
    }

    /// Kube-OVN's Subnet status counters and ranges.
    pub fn subnet_status(&self, subnet: &str) -> Result<AddressStatus, EngineError> {
        Ok(self.subnet(subnet)?.lock().status())
    }

    /// Kube-OVN's IPPool status counters and ranges.
    pub fn pool_status(&self, pool: &str) -> Result<AddressStatus, EngineError> {
        let unknown = || EngineError::UnknownPool {
            pool: pool.to_owned(),
        };
        let subnet = self
            .pool_index
            .lock()
            .get(pool)
            .cloned()
            .ok_or_else(unknown)?;
        self.subnet(&subnet)?
            .lock()
            .pool_status(pool)
            .ok_or_else(unknown)
    }

    /// Every spec and binding, sorted. Each subnet is read under its lock;
    /// the whole is consistent when no claim runs at the same time.
    pub fn snapshot(&self) -> Snapshot {
        let mut states: Vec<(String, Arc<Mutex<SubnetState>>)> = self
            .subnets
            .read()
            .iter()
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect();
        states.sort_by(|a, b| a.0.cmp(&b.0));
        let mut snapshot = Snapshot::default();
        for (_, state) in states {
            let state = state.lock();
            snapshot.subnets.push(state.config.spec.clone());
            snapshot
                .pools
                .extend(state.pools.values().map(|p| p.spec.clone()));
            snapshot
                .records
                .extend(state.leases().into_iter().map(|lease| Record {
                    lease,
                    source: crate::request::RecordSource::IpResource,
                }));
        }
        snapshot.pools.sort_by(|a, b| a.name.cmp(&b.name));
        snapshot
    }

    /// Builds an engine from a snapshot, deterministically: records are
    /// applied in (source, content) order whatever order they came in. A
    /// record colliding with one already applied is left out and reported
    /// with it; nothing is silently overwritten. Holders outside their
    /// subnet are kept (and reported by [`Engine::stranded`]).
    pub fn rebuild(
        snapshot: &Snapshot,
        rng: impl RngCore + Send + 'static,
    ) -> (Engine, RebuildReport) {
        let engine = Engine::with_rng(rng);
        let mut report = RebuildReport::default();
        let mut subnets: Vec<&SubnetSpec> = snapshot.subnets.iter().collect();
        subnets.sort_by(|a, b| a.name.cmp(&b.name));
        for spec in subnets {
            if let Err(e) = engine.upsert_subnet(spec) {
                report.rejected_specs.push(e);
            }
        }
        let mut pools: Vec<&PoolSpec> = snapshot.pools.iter().collect();
        pools.sort_by(|a, b| a.name.cmp(&b.name));
        for spec in pools {
            if let Err(e) = engine.upsert_pool(spec) {
                report.rejected_specs.push(e);
            }
        }
        engine.reserve(&snapshot.records);
        let mut records: Vec<&Record> = snapshot.records.iter().collect();
        records.sort_unstable_by(|a, b| (a.source, &a.lease).cmp(&(b.source, &b.lease)));
        let mut applied: FastMap<NicKey, &Record> =
            FastMap::with_capacity_and_hasher(records.len(), Default::default());
        let mut max_generation = 0;
        for record in records {
            match engine.restore(record, &applied) {
                Ok(true) => {
                    max_generation = max_generation.max(record.lease.generation);
                    applied.insert(record.lease.key.clone(), record);
                }
                Ok(false) => {}
                Err(Restore::Conflict(kept, on)) => report.conflicts.push(RecordConflict {
                    kept: *kept,
                    rejected: record.clone(),
                    on,
                }),
                Err(Restore::Refused(error)) => report.unplaced.push((record.clone(), error)),
            }
        }
        engine
            .generation
            .fetch_max(max_generation, Ordering::Relaxed);
        (engine, report)
    }

    /// Sizes the maps for the records up front, so a large rebuild does
    /// not pay for repeated rehashing.
    fn reserve(&self, records: &[Record]) {
        let mut per_subnet: FastMap<&str, usize> = FastMap::default();
        for record in records {
            *per_subnet.entry(record.lease.subnet.as_str()).or_default() += 1;
        }
        for (subnet, count) in per_subnet {
            if let Ok(state) = self.subnet(subnet) {
                state.lock().nics.reserve(count);
            }
        }
        let per_shard = records.len() / SHARDS + 1;
        for shard in &self.keys.shards {
            shard.lock().reserve(per_shard);
        }
        for shard in &self.macs.shards {
            shard.lock().reserve(per_shard);
        }
    }

    /// Applies one rebuild record; `Ok(false)` for a duplicate of an applied one.
    fn restore(
        &self,
        record: &Record,
        applied: &FastMap<NicKey, &Record>,
    ) -> Result<bool, Restore> {
        let lease = &record.lease;
        if let Some(kept) = applied.get(&lease.key) {
            let same = kept.lease.subnet == lease.subnet
                && kept.lease.addresses() == lease.addresses()
                && kept.lease.mac == lease.mac;
            return if same {
                Ok(false)
            } else {
                Err(Restore::Conflict(
                    Box::new(Record::clone(kept)),
                    ConflictOn::Key,
                ))
            };
        }
        let state = self.subnet(&lease.subnet).map_err(Restore::Refused)?;
        let mut state = state.lock();
        let mut addr = [None, None];
        for family in Family::ALL {
            addr[family.index()] = lease.address(family).map(to_u128);
        }
        if let Some((address, holder)) = state.holder_of_any(&addr, &lease.key) {
            return Err(Restore::Conflict(
                Box::new(Record::clone(applied[&holder])),
                ConflictOn::Address(address),
            ));
        }
        if let Some(mac) = lease.mac {
            let holder = MacHolder::Nic {
                key: lease.key.clone(),
                subnet: state.name.clone(),
            };
            match self.macs.claim(&mac, holder) {
                Ok(()) => {}
                Err(MacHolder::Nic { key, .. }) => {
                    return Err(Restore::Conflict(
                        Box::new(Record::clone(applied[&key])),
                        ConflictOn::Mac(mac),
                    ));
                }
                Err(holder) => {
                    return Err(Restore::Refused(EngineError::MacConflict {
                        mac,
                        holder,
                        key: lease.key.clone(),
                    }));
                }
            }
        }
        self.keys
            .claim(&lease.key, state.name.clone())
            .expect("keys are unique among applied records");
        state.commit(
            &lease.key,
            Binding {
                uid: lease.uid.clone(),
                generation: lease.generation,
                addr,
                mac: lease.mac,
            },
        );
        Ok(true)
    }
}

enum Restore {
    Conflict(Box<Record>, ConflictOn),
    Refused(EngineError),
}
