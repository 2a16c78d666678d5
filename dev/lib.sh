# Shared helpers for the dev/ scripts (sourced, not run).

pk_log() { printf '==> %s\n' "$*" >&2; }
pk_die() {
	printf 'error: %s\n' "$*" >&2
	exit 1
}

# The repository root, whatever folder the script is called from.
pk_repo_root() { cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd; }

# Put cargo on PATH. `sudo` resets PATH, so also look in root's and the invoking user's
# ~/.cargo/bin; a toolchain found in the invoking user's home is used with that user's
# rustup and cargo homes.
pk_find_cargo() {
	command -v cargo >/dev/null 2>&1 && return 0
	if [ -x "$HOME/.cargo/bin/cargo" ]; then
		PATH="$HOME/.cargo/bin:$PATH"
	elif [ -n "${SUDO_USER:-}" ]; then
		local user_home
		user_home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
		if [ -x "$user_home/.cargo/bin/cargo" ]; then
			PATH="$user_home/.cargo/bin:$PATH"
			export CARGO_HOME="${CARGO_HOME:-$user_home/.cargo}"
			export RUSTUP_HOME="${RUSTUP_HOME:-$user_home/.rustup}"
		fi
	fi
	export PATH
	command -v cargo >/dev/null 2>&1 ||
		pk_die "cargo not found: install a stable Rust toolchain (https://rustup.rs), then rerun"
}
