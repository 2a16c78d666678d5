//! A KubeVirt VM's network through a live migration, played the way QEMU plays it, with live
//! traffic that measures it.
//!
//! The VM's NIC lives in its virt-launcher pod's network namespace: the pod's `eth0` carries the
//! VM's MAC and address behind the pod's OVS port, whose `iface-id` is the VM's logical switch
//! port. A migration adds a second launcher pod on the target with the same MAC and address while
//! the source still runs. At the switch-over QEMU pauses the source, resumes the target and
//! announces the VM from there with RARPs (its `announce_self`: five rounds, 50 ms apart and
//! growing by 100 ms); the source's interface goes away with its pod.
//!
//! Here the VM is a UDP endpoint present in every launcher pod of the VM but running in at most
//! one ([`Instance`]): only the running instance sends, and only what it receives counts (a
//! paused or not yet resumed QEMU drops what reaches its tap). [`Traffic`] streams numbered
//! probes every [`INTERVAL`] both ways between the VM and a prober in another pod, so any stretch
//! of a migration can be judged with [`Verdict`].

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use portkeeper_cni::daemon::announce;
use portkeeper_cni::daemon::netns::Netns;

use crate::probe::Verdict;

/// One probe each way every 10 ms.
pub const INTERVAL: Duration = Duration::from_millis(10);
/// RARP's ethertype.
const ETH_P_RARP: u16 = 0x8035;
/// When QEMU sends its announcements, from the moment the target runs (`announce-initial` 50 ms,
/// `announce-step` 100 ms, `announce-rounds` 5).
const ANNOUNCE_AT_MS: [u64; 5] = [0, 50, 150, 300, 500];
/// Every probe starts with this, so a stray datagram is never counted.
const MAGIC: &[u8; 8] = b"pkprobe1";
/// How long a probe may be in flight before it counts as lost.
const IN_FLIGHT: Duration = Duration::from_millis(200);

/// One launcher pod's copy of the VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Instance(u32);

/// A point in both streams: the number of the next probe each way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    /// Next probe from the prober to the VM.
    pub to_vm: u64,
    /// Next probe from the VM to the prober.
    pub to_prober: u64,
}

/// What a stretch of traffic lost, each way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Judged {
    /// Prober → VM, as the running VM received it.
    pub to_vm: Verdict,
    /// VM → prober.
    pub to_prober: Verdict,
}

/// The RARP QEMU sends to announce a VM with `mac` (QEMU's `announce_self_create`): a reverse
/// request from and for `mac`, broadcast, padded to Ethernet's minimum.
pub fn rarp(mac: [u8; 6]) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ETH_P_RARP.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 3]); // Ethernet, IPv4, hlen, plen, reverse request
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0; 4]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0; 4]);
    f.resize(60, 0);
    f
}

/// The VM's copies and which one runs.
#[derive(Default)]
struct Vm {
    instances: BTreeMap<Instance, Arc<UdpSocket>>,
    running: Option<Instance>,
    next: u32,
}

/// What the sender, the receivers and the caller share.
struct Shared {
    stop: AtomicBool,
    vm: Mutex<Vm>,
    prober: UdpSocket,
    prober_addr: SocketAddr,
    vm_addr: SocketAddr,
    next_to_vm: AtomicU64,
    next_to_prober: AtomicU64,
    /// Sequence numbers in arrival order at the running VM instance.
    at_vm: Mutex<Vec<u64>>,
    /// Sequence numbers in arrival order at the prober.
    at_prober: Mutex<Vec<u64>>,
}

/// Probes streaming both ways between a prober and a VM whose instances come and go.
pub struct Traffic {
    shared: Arc<Shared>,
    mac: [u8; 6],
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// A UDP socket bound to `addr` (IPv4) inside the network namespace at `netns`.
///
/// Its datagrams carry no UDP checksum (`SO_NO_CHECK`; zero means "none" in IPv4). A veth leaves
/// the checksum to be completed by whoever transmits the packet, and the local cluster's
/// userspace OVS datapath reads veths through packet sockets and never completes it, so
/// receivers would drop every checksummed datagram (`InCsumErrors`).
pub fn socket_in(netns: &Path, addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = enter(netns, || UdpSocket::bind(addr))??;
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    let on: libc::c_int = 1;
    // SAFETY: setsockopt(2) on a descriptor `socket` owns, with a pointer to a live c_int and
    // its size.
    let set = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NO_CHECK,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if set != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(socket)
}

fn enter<T: Send>(netns: &Path, job: impl FnOnce() -> T + Send) -> io::Result<T> {
    Netns::open(netns)
        .and_then(|n| n.enter_sync(job))
        .map_err(|e| io::Error::other(format!("network namespace {}: {e}", netns.display())))
}

fn probe(seq: u64) -> [u8; 16] {
    let mut p = [0; 16];
    p[..8].copy_from_slice(MAGIC);
    p[8..].copy_from_slice(&seq.to_be_bytes());
    p
}

fn seq_of(datagram: &[u8]) -> Option<u64> {
    let rest = datagram.strip_prefix(MAGIC)?;
    Some(u64::from_be_bytes(rest.try_into().ok()?))
}

impl Traffic {
    /// Starts the streams between a prober at `prober` (network namespace, address) and the VM
    /// with `mac`, running at `vm` (its first launcher pod's namespace and the VM's address);
    /// both ends use the UDP port `port`.
    pub fn start(
        prober: (&Path, IpAddr),
        vm: (&Path, IpAddr),
        mac: [u8; 6],
        port: u16,
    ) -> io::Result<(Traffic, Instance)> {
        let prober_addr = SocketAddr::new(prober.1, port);
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            vm: Mutex::new(Vm::default()),
            prober: socket_in(prober.0, prober_addr)?,
            prober_addr,
            vm_addr: SocketAddr::new(vm.1, port),
            next_to_vm: AtomicU64::new(0),
            next_to_prober: AtomicU64::new(0),
            at_vm: Mutex::new(Vec::new()),
            at_prober: Mutex::new(Vec::new()),
        });
        let traffic = Traffic {
            shared: shared.clone(),
            mac,
            threads: Mutex::new(Vec::new()),
        };
        let first = traffic.plug(vm.0)?;
        traffic.shared.vm.lock().unwrap().running = Some(first);
        let receiver = shared.clone();
        let sender = shared;
        traffic.spawn(move || receive_at_prober(&receiver));
        traffic.spawn(move || send_both_ways(&sender));
        Ok((traffic, first))
    }

    fn spawn(&self, job: impl FnOnce() + Send + 'static) {
        self.threads.lock().unwrap().push(std::thread::spawn(job));
    }

    /// A new copy of the VM in the launcher pod whose namespace is `netns`, not running yet (a
    /// migration target before the switch-over).
    pub fn plug(&self, netns: &Path) -> io::Result<Instance> {
        let socket = Arc::new(socket_in(netns, self.shared.vm_addr)?);
        let instance = {
            let mut vm = self.shared.vm.lock().unwrap();
            let instance = Instance(vm.next);
            vm.next += 1;
            vm.instances.insert(instance, socket.clone());
            instance
        };
        let shared = self.shared.clone();
        self.spawn(move || receive_at_vm(&shared, instance, &socket));
        Ok(instance)
    }

    /// The switch-over: the running instance pauses, `to` (in the namespace `netns`) runs and
    /// announces the VM with QEMU's RARPs. Returns the streams' position at that moment.
    pub fn switch_over(&self, to: Instance, netns: &Path) -> Mark {
        let mark = {
            let mut vm = self.shared.vm.lock().unwrap();
            assert!(vm.instances.contains_key(&to), "{to:?} is not plugged");
            vm.running = Some(to);
            self.mark()
        };
        let (netns, frame) = (netns.to_path_buf(), rarp(self.mac));
        self.spawn(move || announce_from(&netns, &frame));
        mark
    }

    /// The instance's launcher pod goes away: its copy neither runs nor receives any more.
    pub fn unplug(&self, instance: Instance) {
        let mut vm = self.shared.vm.lock().unwrap();
        vm.instances.remove(&instance);
        if vm.running == Some(instance) {
            vm.running = None;
        }
    }

    /// The streams' position now.
    pub fn mark(&self) -> Mark {
        Mark {
            to_vm: self.shared.next_to_vm.load(Ordering::SeqCst),
            to_prober: self.shared.next_to_prober.load(Ordering::SeqCst),
        }
    }

    /// Judges the probes sent from `from` up to `to`, once the last of them had time to arrive.
    pub fn judge(&self, from: Mark, to: Mark) -> Judged {
        std::thread::sleep(IN_FLIGHT);
        Judged {
            to_vm: Verdict::of(from.to_vm..to.to_vm, &self.shared.at_vm.lock().unwrap()),
            to_prober: Verdict::of(
                from.to_prober..to.to_prober,
                &self.shared.at_prober.lock().unwrap(),
            ),
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.vm.lock().unwrap().instances.clear();
        for t in self.threads.get_mut().unwrap().drain(..) {
            let _ = t.join();
        }
    }
}

/// Sends one probe each way per [`INTERVAL`] on a fixed schedule; the VM's probe leaves from
/// its running instance, and while none runs the VM sends nothing.
fn send_both_ways(shared: &Shared) {
    let start = Instant::now();
    let mut tick: u32 = 0;
    while !shared.stop.load(Ordering::SeqCst) {
        let seq = shared.next_to_vm.fetch_add(1, Ordering::SeqCst);
        let _ = shared.prober.send_to(&probe(seq), shared.vm_addr);
        let running = {
            let vm = shared.vm.lock().unwrap();
            vm.running.and_then(|i| vm.instances.get(&i).cloned())
        };
        if let Some(socket) = running {
            let seq = shared.next_to_prober.fetch_add(1, Ordering::SeqCst);
            let _ = socket.send_to(&probe(seq), shared.prober_addr);
        }
        tick += 1;
        let next = start + INTERVAL * tick;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
}

fn receive_at_prober(shared: &Shared) {
    let mut buf = [0; 64];
    while !shared.stop.load(Ordering::SeqCst) {
        if let Ok((n, _)) = shared.prober.recv_from(&mut buf)
            && let Some(seq) = seq_of(&buf[..n])
        {
            shared.at_prober.lock().unwrap().push(seq);
        }
    }
}

/// Receives at one instance until it is unplugged; counts only while it runs.
fn receive_at_vm(shared: &Shared, me: Instance, socket: &UdpSocket) {
    let mut buf = [0; 64];
    loop {
        let received = socket.recv_from(&mut buf);
        let vm = shared.vm.lock().unwrap();
        if !vm.instances.contains_key(&me) {
            return;
        }
        if let Ok((n, _)) = received
            && vm.running == Some(me)
            && let Some(seq) = seq_of(&buf[..n])
        {
            shared.at_vm.lock().unwrap().push(seq);
        }
    }
}

/// QEMU's announcement rounds from the target's `eth0`.
fn announce_from(netns: &Path, frame: &[u8]) {
    let started = Instant::now();
    let sent = enter(netns, || -> io::Result<()> {
        let index = nix::net::if_::if_nametoindex("eth0").map_err(io::Error::from)?;
        for at in ANNOUNCE_AT_MS.map(Duration::from_millis) {
            if let Some(wait) = (started + at).checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            announce::send(index, ETH_P_RARP, frame)?;
        }
        Ok(())
    });
    if let Err(e) = sent.and_then(|r| r) {
        eprintln!("RARP from {}: {e}", netns.display());
    }
}

/// The network namespace of a pod sandbox made by the local cluster's node agent.
pub fn pod_netns(prefix: &str, pod_uid: &str) -> PathBuf {
    Path::new("/run/netns").join(format!("{prefix}{pod_uid}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rarp_is_qemus_announcement() {
        let mac = [0x0a, 0x58, 0x0a, 0x11, 0x00, 0x05];
        let f = rarp(mac);
        assert_eq!(f.len(), 60);
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[12..14], &[0x80, 0x35]);
        assert_eq!(&f[14..22], &[0, 1, 8, 0, 6, 4, 0, 3]);
        assert_eq!(&f[22..28], &mac, "sender hardware address");
        assert_eq!(&f[28..32], &[0; 4]);
        assert_eq!(&f[32..38], &mac, "target hardware address");
        assert!(f[38..].iter().all(|b| *b == 0));
    }

    #[test]
    fn probes_round_trip_and_strays_are_ignored() {
        assert_eq!(seq_of(&probe(0)), Some(0));
        assert_eq!(seq_of(&probe(u64::MAX - 3)), Some(u64::MAX - 3));
        assert_eq!(seq_of(b"pkprobe1short"), None);
        assert_eq!(seq_of(&[0; 16]), None);
    }
}
