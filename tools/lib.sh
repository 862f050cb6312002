# tools/lib.sh - shared by tools/test and tools/demo: install what is missing
# from Debian's packages, and build one configuration. Sourced, not run.

DOVE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# The packages a build needs. tools/test adds the MariaDB server.
DOVE_BUILD_PKGS="build-essential cmake pkg-config liburcu-dev libjemalloc-dev
libmariadb-dev libinih-dev check"

dove_log() { printf '== %s\n' "$*" >&2; }

# Install every named Debian package that is not installed yet. Runs
# apt-get update once, and only when something is missing.
dove_install() {
	local missing=() p
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null |
			grep -q 'install ok installed' || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	local sudo=""
	if [ "$(id -u)" -ne 0 ]; then
		command -v sudo >/dev/null || {
			echo "not root and no sudo: install ${missing[*]} by hand" >&2
			return 1
		}
		sudo=sudo
	fi
	dove_log "installing: ${missing[*]}"
	$sudo apt-get update -qq || return 1
	# Never start services from the packages: tools/test runs its own
	# private MariaDB, and a system one would only get in the way.
	DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 \
		$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" \
		>/dev/null || return 1
}

# dove_build DIR [cmake options...]: configure (once) and build DIR.
dove_build() {
	local dir=$1
	shift
	dove_log "building $dir $*"
	cmake -S "$DOVE_ROOT" -B "$DOVE_ROOT/$dir" "$@" >/dev/null || return 1
	# Show only warnings and errors; a failed build fails here even if an
	# older binary is still lying around.
	cmake --build "$DOVE_ROOT/$dir" -j"$(nproc)" >"$DOVE_ROOT/$dir/build.log" 2>&1 || {
		grep -vE '^\[|^-- ' "$DOVE_ROOT/$dir/build.log" >&2
		echo "build of $dir failed (full log: $dir/build.log)" >&2
		return 1
	}
}

# dove_exec_tool NAME [args...]: make sure build/NAME is built and current
# (installing what is missing on a fresh machine), then run it.
dove_exec_tool() {
	local name=$1
	shift
	dove_install $DOVE_BUILD_PKGS || exit 1
	if [ ! -f "$DOVE_ROOT/build/CMakeCache.txt" ]; then
		dove_build build -DCMAKE_BUILD_TYPE=RelWithDebInfo || exit 1
	else
		cmake --build "$DOVE_ROOT/build" --target "$name" >/dev/null 2>&1 ||
			dove_build build || exit 1
	fi
	exec "$DOVE_ROOT/build/$name" "$@"
}
