# shellcheck shell=bash
# Real nodes for the local cluster (`up --kubelet`): per node its own containerd and kubelet, in
# the node's network namespace and in a mount namespace of its own. Sourced by `up` and `down`.
#
# Why a mount namespace per node: a kubelet and a containerd keep state at fixed host paths that
# no flag moves (kubelet: /var/log/pods and /var/log/containers, whose garbage collector deletes
# the log folders of pods it does not know, i.e. the other node's; containerd: the shims' sockets
# under /run/containerd/s), and the manifests in yamls/ name host paths (/opt/cni/bin,
# /etc/cni/net.d, /run/openvswitch, /run/portkeeper, /var/run/netns) that must be the node's own.
# Each node's namespace bind-mounts a folder of its own over each of these paths.

# host path -> folder under the node's fs/ (the node's own copy of that path)
pk_node_paths=(
	/etc/cni/net.d:cni-conf
	/opt/cni/bin:cni-bin
	/var/lib/kubelet:kubelet
	/var/lib/containerd:containerd
	/run/containerd:containerd-run
	/var/log/pods:log-pods
	/var/log/containers:log-containers
	/run/portkeeper:portkeeper-run
	/run/netns:netns
)

# The service addresses a node reaches the control plane at, on its loopback (no kube-proxy):
# 10.96.0.1:443 is the `kubernetes` Service (the address in-cluster clients get), relayed to the
# apiserver; 10.96.0.2:6641 stands for the OVN NB Service of yamls/controller.yaml.
PK_API_SERVICE=10.96.0.1
PK_NB_SERVICE=10.96.0.2
# The node's image registry (registry-serve), on its loopback.
PK_REGISTRY=127.0.0.1:5000

# The mount namespace of a node, pinned on a file so that processes can join it.
pk_node_mntns() { # N
	printf '%s/pin/mnt\n' "$1"
}

# Make the node's mount namespace: its own folders over the node paths, /run/openvswitch = the
# node's OVS folder, and shared propagation inside (the kubelet's volumes and the DaemonSet's
# HostToContainer mount need it); nothing propagates back to the host.
pk_node_mount_setup() { # N ovs-dir
	local N=$1 ovs=$2 pin pair binds=""
	pin="$N/pin"
	mkdir -p "$pin"
	mount --bind "$pin" "$pin"
	mount --make-private "$pin"
	touch "$pin/mnt"
	unshare --mount="$pin/mnt" --propagation slave true
	for pair in "${pk_node_paths[@]}" "/run/openvswitch:"; do
		local target=${pair%%:*} dir=${pair#*:} src
		if [ -n "$dir" ]; then src="$N/fs/$dir"; else src=$ovs; fi
		mkdir -p "$src"
		binds="$binds mkdir -p $target && mount --bind $src $target &&"
	done
	nsenter --mount="$pin/mnt" sh -ec "$binds mount --make-rshared /"
}

# A command run inside the node: its network namespace and its mount namespace.
pk_node_exec() { # N netns cmd...
	local N=$1 nns=$2
	shift 2
	nsenter --net="/run/netns/$nns" --mount="$(pk_node_mntns "$N")" "$@"
}

# Every cgroup folder (in each hierarchy of cgroup v1, or in the v2 tree) whose name starts with
# this cluster's prefix: the kubelets' cgroup roots and the runtimes' cgroups.
pk_cgroup_dirs() { # prefix
	find /sys/fs/cgroup -mindepth 1 -maxdepth 2 -type d -name "$1*" 2>/dev/null
}

# A process of a real node's pod (its sandbox's pause, or a container's), by the pod's UID; empty
# when none runs. The kubelet (cgroupfs driver) puts each pod in a cgroup `pod<uid>` under its node's
# cgroup root.
pk_pod_pid() { # prefix uid
	local dirs pod
	mapfile -t dirs < <(pk_cgroup_dirs "$1")
	[ "${#dirs[@]}" -gt 0 ] || return 0
	while read -r pod; do
		find "$pod" -name cgroup.procs -exec cat {} + 2>/dev/null | head -n1
		return 0
	done < <(find "${dirs[@]}" -type d -name "pod$2" 2>/dev/null)
}

# Leave a node's mount namespace: unpin it (it ends with its last process).
pk_node_mount_teardown() { # N
	local pin="$1/pin"
	[ -d "$pin" ] || return 0
	umount "$pin/mnt" 2>/dev/null || true
	umount "$pin" 2>/dev/null || true
}

# Kill every process in this cluster's cgroups (the nodes' pods, and their containerds with their
# shims), then remove the folders. Only processes this cluster started are there: the prefix is
# unique to the run.
pk_cgroup_cleanup() { # prefix
	local dirs d pid left
	mapfile -t dirs < <(pk_cgroup_dirs "$1")
	[ "${#dirs[@]}" -gt 0 ] || return 0
	for _ in $(seq 50); do
		left=0
		while read -r pid; do
			left=1
			kill -KILL "$pid" 2>/dev/null || true
		done < <(find "${dirs[@]}" -name cgroup.procs -exec cat {} + 2>/dev/null)
		[ "$left" = 0 ] && break
		sleep 0.2
	done
	for d in "${dirs[@]}"; do
		find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
	done
}

# Make a cgroup in every hierarchy (v1) or in the v2 tree; a v1 cpuset gets its parent's CPUs and
# memory nodes, without which no process can join it.
pk_cgroup_create() { # name
	local d
	if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
		mkdir -p "/sys/fs/cgroup/$1"
		return
	fi
	for d in /sys/fs/cgroup/*/; do
		[ -f "$d/cgroup.procs" ] && [ "$d" != /sys/fs/cgroup/unified/ ] || continue
		mkdir -p "$d$1"
		if [ -f "$d$1/cpuset.cpus" ]; then
			cat "$d/cpuset.cpus" >"$d$1/cpuset.cpus"
			cat "$d/cpuset.mems" >"$d$1/cpuset.mems"
		fi
	done
}

# The cgroup a node's containerd runs in (pids hierarchy on v1), so that `down` finds its shims.
pk_runtime_cgroup() { # prefix node
	if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
		printf '/sys/fs/cgroup/%s%s-runtime\n' "$1" "$2"
	else
		printf '/sys/fs/cgroup/pids/%s%s-runtime\n' "$1" "$2"
	fi
}

# containerd's configuration for a node: its socket in the node folder, everything else at the
# default paths, which the node's mount namespace makes its own. Without CAP_SYS_RESOURCE (some
# sandboxes, e.g. a Firecracker VM's init, drop it) no process may lower its oom_score_adj, and
# runc fails every pod sandbox (containerd gives them -998): then containerd keeps the scores at
# or above its own.
pk_containerd_config() { # N
	local restrict_oom=false
	# CAP_SYS_RESOURCE is capability 24.
	(($(printf '%d' "0x$(awk '/^CapEff:/ {print $2}' /proc/self/status)") >> 24 & 1)) ||
		restrict_oom=true
	cat <<TOML
version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "$1/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "k8s.gcr.io/pause:3.2"
  restrict_oom_score_adj = $restrict_oom
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$1/registries"
TOML
}

# No registry is reachable, and none may be asked: each registry an image here could name is
# redirected to the node's own read-only registry (registry-serve on PK_REGISTRY), which serves the
# images of kind-e2e/images/build and answers 404 for any other, so a missing image fails at once
# and nothing goes out. containerd 1.6 ignores a hosts.toml without a [host] table (it logs
# "invalid `host` tree" and asks the registry itself), hence the table.
pk_containerd_registries() { # N
	local r
	for r in docker.io k8s.gcr.io registry.k8s.io gcr.io quay.io ghcr.io; do
		mkdir -p "$1/registries/$r"
		printf 'server = "http://%s"\n[host."http://%s"]\n  capabilities = ["pull", "resolve"]\n' \
			"$PK_REGISTRY" "$PK_REGISTRY" >"$1/registries/$r/hosts.toml"
	done
}

# The registry's folder (see registry-serve): every image's blobs, and per image name the digest
# of its manifest. Images: lines `NAME ARCHIVE` of kind-e2e/images/build, NAME fully qualified.
pk_registry_fill() { # dir image...
	local dir=$1 image name archive registry rest digest
	shift
	mkdir -p "$dir"
	for image in "$@"; do
		name=${image%% *} archive=${image#* }
		tar -xf "$archive" -C "$dir" ./blobs
		digest=$(tar -xOf "$archive" ./index.json | jq -r '.manifests[0].digest')
		[[ $digest =~ ^sha256:[0-9a-f]{64}$ ]] || pk_die "$archive: no manifest digest in index.json"
		registry=${name%%/*} rest=${name#*/}
		mkdir -p "$dir/tags/$registry/${rest%:*}"
		printf '%s\n' "$digest" >"$dir/tags/$registry/${rest%:*}/${rest##*:}"
	done
}

# The kubelet's configuration: its own cgroup root, and no eviction on a machine whose disk is
# shared and often fuller than the default thresholds.
pk_kubelet_config() { # node-ip cgroup-root ca
	cat <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $1
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $3}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
cgroupRoot: $2
cgroupsPerQOS: true
enforceNodeAllocatable: [pods]
failSwapOn: false
makeIPTablesUtilChains: false
protectKernelDefaults: false
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
nodeStatusUpdateFrequency: 5s
oomScoreAdj: 0
syncFrequency: 10s
YAML
}
