# shellcheck shell=bash
# Helpers shared by the local-cluster scripts. Sourced, never run.

# Where built binaries live: outside the repository, keyed by Debian version.
pk_cache_root() {
	printf '%s\n' "${PORTKEEPER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/portkeeper}"
}

pk_die() {
	printf '%s: %s\n' "${0##*/}" "$*" >&2
	exit 1
}

pk_log() {
	printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2
}

# True when every named Debian package is installed.
pk_have_pkgs() {
	local p
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || return 1
	done
}

# apt-get, serialised with other apt users on the machine and waiting for dpkg's own lock.
pk_apt() {
	DEBIAN_FRONTEND=noninteractive flock /tmp/apt.lock \
		apt-get -o DPkg::Lock::Timeout=900 "$@"
}

# Install the named packages that are missing.
pk_ensure_pkgs() {
	local missing=() p
	for p in "$@"; do
		pk_have_pkgs "$p" || missing+=("$p")
	done
	[ "${#missing[@]}" -eq 0 ] && return 0
	[ "$(id -u)" -eq 0 ] || pk_die "need root to install: ${missing[*]}"
	pk_log "installing ${missing[*]}"
	pk_apt install -y --no-install-recommends "${missing[@]}" >&2 ||
		{ pk_apt update >&2 && pk_apt install -y --no-install-recommends "${missing[@]}" >&2; }
}

# Debian version of the kubernetes source package (= the version of its kubernetes-client binary).
pk_kube_version() {
	local v
	v=$(apt-cache policy kubernetes-client 2>/dev/null | awk '/Candidate:/ {print $2}')
	if [ -z "$v" ] || [ "$v" = "(none)" ]; then
		v=$(apt-cache showsrc kubernetes 2>/dev/null | awk '/^Version:/ {print $2}' | sort -V | tail -n1)
	fi
	[ -n "$v" ] && [ "$v" != "(none)" ] || return 1
	printf '%s\n' "$v"
}

pk_kube_bin_dir() {
	local v
	v=$(pk_kube_version) || return 1
	printf '%s/kube-%s\n' "$(pk_cache_root)" "$v"
}

# The run folder of the local cluster: everything a cluster makes lives here.
pk_run_dir() {
	local here
	here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
	printf '%s\n' "${PORTKEEPER_RUN_DIR:-$here/.run}"
}

# Start time of a live process (clock ticks since boot): with the pid, it names one process for
# good. Fails for a zombie, which has exited and only waits to be reaped.
pk_proc_start() {
	local stat
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	stat=${stat##*) }
	# shellcheck disable=SC2086
	set -- $stat
	[ "$1" != Z ] || return 1
	printf '%s\n' "${20}"
}

# True when the component's recorded process is still the one we started.
pk_alive() {
	local f="$R/pid/$1" pid start
	[ -f "$f" ] || return 1
	read -r pid start <"$f"
	[ -n "${start:-}" ] && [ "$(pk_proc_start "$pid" 2>/dev/null)" = "$start" ]
}

# Launch a component from its command file, in its own session, logging to the run folder.
pk_launch() {
	local name=$1 pid
	setsid bash "$R/cmd/$name.sh" >>"$R/log/$name.log" 2>&1 </dev/null &
	pid=$!
	# An empty start time (the process already exited) never matches a live process.
	printf '%s %s\n' "$pid" "$(pk_proc_start "$pid" || true)" >"$R/pid/$name"
}

# Record a component's command line, then launch it.
pk_start() {
	local name=$1
	shift
	{
		printf '#!/usr/bin/env bash\nexec'
		printf ' %q' "$@"
		printf '\n'
	} >"$R/cmd/$name.sh"
	grep -qx "$name" "$R/order" 2>/dev/null || printf '%s\n' "$name" >>"$R/order"
	pk_launch "$name"
}

# Record how to tell that a component is ready to serve (used after a restart).
pk_ready_check() {
	local name=$1
	shift
	{
		printf '#!/usr/bin/env bash\nexec'
		printf ' %q' "$@"
		printf '\n'
	} >"$R/cmd/$name.ready"
}

# Wait (up to 60 s) for a component's ready check, when it has one.
pk_wait_ready() {
	[ -f "$R/cmd/$1.ready" ] || return 0
	pk_wait 60 "$1 to be ready" bash "$R/cmd/$1.ready"
}

# Stop exactly the process we started for a component: TERM, then KILL after 10 s.
pk_stop() {
	local name=$1 pid start
	[ -f "$R/pid/$name" ] || return 0
	read -r pid start <"$R/pid/$name"
	if pk_alive "$name"; then
		kill -TERM "$pid" 2>/dev/null || true
		for _ in $(seq 100); do
			pk_alive "$name" || break
			sleep 0.1
		done
		if pk_alive "$name"; then
			pk_log "$name (pid $pid) ignored TERM; killing"
			kill -KILL "$pid" 2>/dev/null || true
			for _ in $(seq 50); do
				pk_alive "$name" || break
				sleep 0.1
			done
		fi
	fi
	rm -f "$R/pid/$name"
}

# Wait until a command succeeds, up to a number of seconds.
pk_wait() {
	local secs=$1 what=$2 deadline
	shift 2
	deadline=$((SECONDS + secs))
	while [ "$SECONDS" -lt "$deadline" ]; do
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.2
	done
	pk_die "timed out after ${secs}s waiting for $what"
}

# Puts a node's underlay address on its br-phy (the tap ovs-vswitchd makes, gone when it stops).
pk_underlay_address() { # netns address/prefix
	pk_wait 30 "br-phy in $1" ip -n "$1" link show br-phy
	ip -n "$1" addr replace "$2" dev br-phy
	ip -n "$1" link set br-phy up
}

# The ServiceAccount and RBAC documents of YAML files (others, such as a DaemonSet, are left out):
# what portkeeper's components run as in a real cluster, for the local cluster's tokens.
pk_rbac_documents() {
	awk '
		function flush() { if (keep) printf "---\n%s", doc; doc = ""; keep = 0 }
		/^---/ { flush(); next }
		{ doc = doc $0 "\n" }
		/^kind: (ServiceAccount|ClusterRole|ClusterRoleBinding|Role|RoleBinding)$/ { keep = 1 }
		END { flush() }
	' "$@"
}
