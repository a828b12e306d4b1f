#!/usr/bin/env bash
# Runs one command inside a QEMU VM booted with one of the Debian test kernels,
# with the host's root filesystem visible read-only, and exits with its exit code.
#
# usage: run-in-vm.sh --kernel LABEL [--vcpus N] [--mem MB] [--timeout SECONDS]
#                     [--log FILE] -- COMMAND [ARGS...]
#
#   --kernel LABEL   6.1, 6.12 or newest (see fetch-kernels.sh)
#   --vcpus N        guest CPUs (default 2)
#   --mem MB         guest memory (default 2048)
#   --timeout S      how long COMMAND may run, from its start in the guest (default 600)
#   --log FILE       keep the whole serial console there (boot messages included),
#                    each line prefixed with the host time since the VM started
#
# COMMAND is a path as seen by the host: the guest sees the host's / read-only,
# so host-built binaries run there unchanged. A relative COMMAND path is made
# absolute (arguments are passed as they are); a COMMAND without a slash is looked
# up in the guest's PATH (/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin).
# In the guest the command runs as root in /tmp, with stdin from /dev/null, and
# sees fresh tmpfs on /tmp /run /root /var/tmp. Host paths under those that
# appear as COMMAND or as an argument (a build tree under /tmp, say) are kept
# visible, as are the paths in MESHTLS_VM_KEEP (colon-separated).
#
# Environment passed to the command: the host's MESHTLS_* and GTEST_* variables,
# plus MESHTLS_VM_LABEL (6.1, 6.12, newest) and MESHTLS_VM_KERNEL (the release).
#
# Output: one header line, then the command's stdout and stderr (both travel
# over the serial console, so they arrive interleaved on stdout), then, on
# stderr, a line with the exit code and the timings.
#
# Exit codes:
#   0..255 except the below   COMMAND's own exit code
#   123   the guest died while COMMAND ran (kernel panic?); never retried
#   124   COMMAND did not finish within --timeout
#   125   COMMAND never ran: the guest failed to boot twice (it is retried once),
#         or the kernels or the VM could not be set up
#   2     bad usage
# (123..125 are also what COMMAND itself may return; the message on stderr tells.)
#
# Tuning by environment: MESHTLS_VM_BOOT_TIMEOUT (seconds until the command must
# have started, default 180), MESHTLS_VM_CACHE (see fetch-kernels.sh),
# MESHTLS_VM_APPEND (extra kernel command line).
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROG=meshtls-vm

LABEL='' VCPUS=2 MEM=2048 TIMEOUT=600 LOGFILE=''
BOOT_TIMEOUT=${MESHTLS_VM_BOOT_TIMEOUT:-180}
# after the end marker, the guest has this long to power off before it is killed
POWEROFF_GRACE=20

usage() {  # the header comment above is the help text
  sed -n '2,/^set -uo/{/^set -uo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
  exit 0
}
bad_usage() { echo "$PROG: $*" >&2; echo "run $0 --help for the usage" >&2; exit 2; }
setup_failed() { echo "$PROG: ERROR: $*" >&2; exit 125; }

while [ $# -gt 0 ]; do
  case $1 in
    --kernel)  LABEL=${2-}; shift 2 || bad_usage "--kernel needs a value" ;;
    --vcpus)   VCPUS=${2-}; shift 2 || bad_usage "--vcpus needs a value" ;;
    --mem)     MEM=${2-}; shift 2 || bad_usage "--mem needs a value" ;;
    --timeout) TIMEOUT=${2-}; shift 2 || bad_usage "--timeout needs a value" ;;
    --log)     LOGFILE=${2-}; shift 2 || bad_usage "--log needs a value" ;;
    --kernel=*|--vcpus=*|--mem=*|--timeout=*|--log=*)
      opt=${1%%=*}; set -- "$opt" "${1#*=}" "${@:2}"; continue ;;
    -h|--help) usage ;;
    --) shift; break ;;
    *)  bad_usage "unknown option $1 (the command goes after --)" ;;
  esac
done
[ $# -ge 1 ] || bad_usage "no command given (put it after --)"
# the guest starts the command in /tmp: make a relative command path absolute
if [[ $1 == */* && $1 != /* ]]; then set -- "$PWD/$1" "${@:2}"; fi
case $LABEL in 6.1|6.12|newest) ;; *) bad_usage "--kernel must be 6.1, 6.12 or newest" ;; esac
for v in VCPUS MEM TIMEOUT BOOT_TIMEOUT; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || bad_usage "$v must be a positive integer, not '${!v}'"
done

# --- kernel ---------------------------------------------------------------------
kernels=$("$HERE/fetch-kernels.sh") || setup_failed "fetch-kernels.sh failed"
read -r _ KV VMLINUX INITRD < <(awk -v l="$LABEL" '$1 == l' <<< "$kernels") ||
  setup_failed "fetch-kernels.sh listed no kernel $LABEL"
if [ ! -s "$VMLINUX" ] || [ ! -s "$INITRD" ]; then setup_failed "missing $VMLINUX or $INITRD"; fi

# --- per-run scratch directory --------------------------------------------------
# WORK holds the console FIFO and logs; WORK/share is the guest's read-write
# 9p share (mounted at /run/meshtls-vm), which carries cmd.sh in and rc out.
# Each run holds a flock on WORK/lock while it lives (QEMU inherits it). A run
# killed with SIGKILL (a CTest timeout) cannot clean up after itself, so remove
# scratch dirs older than a minute whose lock nobody holds.
while IFS= read -r old; do
  flock -n "$old/lock" true 2>/dev/null && rm -rf "$old"
done < <(find "${TMPDIR:-/tmp}" -maxdepth 1 -name 'meshtls-vm.??????' -type d -mmin +1 2>/dev/null)

QPID=''  # the running QEMU, if any
WORK=''
kill_qemu() {
  [ -n "$QPID" ] || return 0
  if kill -0 "$QPID" 2>/dev/null; then
    kill -TERM "$QPID" 2>/dev/null
    for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$QPID" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$QPID" 2>/dev/null
  fi
  wait "$QPID" 2>/dev/null
  QPID=''
}
# shellcheck disable=SC2317  # called from the EXIT trap
cleanup() { kill_qemu; [ -z "$WORK" ] || rm -rf "$WORK"; }
trap 'echo "$PROG: interrupted" >&2; exit 130' INT
trap 'echo "$PROG: terminated" >&2; exit 143' TERM HUP
WORK=$(mktemp -d "${TMPDIR:-/tmp}/meshtls-vm.XXXXXX") || setup_failed "mktemp failed"
trap cleanup EXIT
exec {WORK_LOCK}> "$WORK/lock"
flock -n "$WORK_LOCK" || setup_failed "cannot lock $WORK/lock"
SHARE=$WORK/share
mkdir -p "$SHARE"

if [ -n "$LOGFILE" ]; then
  if ! mkdir -p "$(dirname "$LOGFILE")" || ! : > "$LOGFILE"; then setup_failed "cannot write $LOGFILE"; fi
else
  LOGFILE=$WORK/console.log
fi

# --- the command, as a script the guest runs ------------------------------------
# Quoting for sh: wrap in single quotes, and write each ' as '\''. This keeps
# every byte (spaces, newlines, quotes, $) of every argument.
shq() { local s=${1//\'/\'\\\'\'}; printf "'%s'" "$s"; }

{
  echo '#!/bin/sh'
  echo "# written by run-in-vm.sh; run by the guest's /init in the chroot"
  while IFS= read -r name; do
    [[ $name =~ ^(MESHTLS|GTEST)_[A-Za-z0-9_]*$ ]] || continue
    echo "export $name=$(shq "${!name}")"
  done < <(compgen -e)
  echo "export MESHTLS_VM_LABEL=$(shq "$LABEL")"
  echo "export MESHTLS_VM_KERNEL=$(shq "$KV")"
  echo 'cd /tmp || exit 125'
  printf 'exec'
  for arg in "$@"; do printf ' %s' "$(shq "$arg")"; done
  echo
} > "$SHARE/cmd.sh"

# Host paths that the guest's tmpfs mounts would hide: keep the top directory
# below /tmp, /run, /root or /var/tmp of every absolute path among COMMAND, ARGS
# and MESHTLS_VM_KEEP that exists on the host.
keep_candidates=("$@")
IFS=: read -r -a extra_keep <<< "${MESHTLS_VM_KEEP:-}"
keep_candidates+=("${extra_keep[@]}")
: > "$SHARE/keep"
for p in "${keep_candidates[@]}"; do
  if [[ $p != /* ]] || [ ! -e "$p" ]; then continue; fi
  for top in /var/tmp /tmp /run /root; do
    if [[ $p == "$top"/?* ]]; then
      rest=${p#"$top"/}
      k=$top/${rest%%/*}
      [ -d "$k" ] && ! grep -qxF "$k" "$SHARE/keep" && echo "$k" >> "$SHARE/keep"
      break
    fi
  done
done

# --- running the VM ---------------------------------------------------------------
QEMU=(qemu-system-x86_64)
# pdeathsig: if this script is killed hard (a CTest timeout), QEMU goes with it
if command -v setpriv >/dev/null; then QEMU=(setpriv --pdeathsig KILL qemu-system-x86_64); fi

# Time in microseconds, and as seconds with one decimal, without forking
# (handle_line runs for every console line).
now_us() { NOW=${EPOCHREALTIME/[.,]/}; }
secs() { printf -v SECS '%d.%01d' $(($1 / 1000000)) $(($1 % 1000000 / 100000)); }

# One boot. Sets OUTCOME (finished, boot_failed, timeout, died), RC, GUEST_KV, and the
# timings T_QEMU, T_START, T_END (microseconds since the epoch).
boot_once() {
  local attempt=$1 token fifo fd chunk pending='' st state=booting
  local deadline
  token=$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
  fifo=$WORK/console.$attempt
  rm -f "$SHARE/rc"
  mkfifo "$fifo"
  OUTCOME='' RC='' GUEST_KV='' T_START='' T_END=''
  BOOT_REASON="no start marker"

  # TCG, single-threaded: KVM does not run stock kernels on these hosts, and
  # multi-threaded TCG occasionally panicked 7.x at boot (int3 during text
  # patching). The ELF vmlinux boots through PVH (no in-guest decompression).
  # panic=-1 plus -no-reboot: a guest panic ends QEMU at once.
  "${QEMU[@]}" \
    -accel tcg,thread=single,tb-size=512 -cpu max -M pc -smp "$VCPUS" -m "$MEM" \
    -nodefaults -no-user-config -display none -serial stdio -no-reboot \
    -kernel "$VMLINUX" -initrd "$INITRD" \
    -append "console=ttyS0 loglevel=4 panic=-1 meshtls.token=$token ${MESHTLS_VM_APPEND:-}" \
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
    -virtfs "local,path=$SHARE,mount_tag=meshtls-run,security_model=none,multidevs=remap" \
    < /dev/null > "$fifo" 2>&1 &
  QPID=$!
  now_us; T_QEMU=$NOW
  exec {fd}< "$fifo"
  deadline=$((T_QEMU + BOOT_TIMEOUT * 1000000))
  echo "=== $PROG: attempt $attempt: kernel $LABEL ($KV), $VCPUS vCPUs, $MEM MB" >> "$LOGFILE"

  handle_line() {
    local l=${1%$'\r'} before
    now_us; secs $((NOW - T_QEMU))
    printf '[%6s] %s\n' "$SECS" "$l" >> "$LOGFILE"
    case $state in
      booting)
        if [[ $l == *"MESHTLS_VM_START $token uname="* ]]; then
          state=running
          T_START=$NOW
          GUEST_KV=${l#*uname=}; GUEST_KV=${GUEST_KV%% *}
          deadline=$((T_START + TIMEOUT * 1000000))
          echo "$PROG: kernel $LABEL = $KV (uname -r inside the guest: $GUEST_KV)"
        fi ;;
      running)
        if [[ $l == *"MESHTLS_VM_END $token rc="* ]]; then
          # output without a final newline ends up in front of the marker
          before=${l%%MESHTLS_VM_END "$token" rc=*}
          [ -z "$before" ] || printf '%s\n' "$before"
          RC=${l##*MESHTLS_VM_END "$token" rc=}; RC=${RC%% *}
          state=finished
          T_END=$NOW
          deadline=$((T_END + POWEROFF_GRACE * 1000000))
        else
          printf '%s\n' "$l"
        fi ;;
      finished) ;;  # power-off chatter: log only
    esac
  }

  while :; do
    if IFS= read -r -t 1 -u "$fd" chunk; then
      handle_line "$pending$chunk"
      pending=''
    else
      st=$?
      if [ "$st" -le 128 ]; then  # EOF: QEMU is gone
        [ -z "$pending$chunk" ] || handle_line "$pending$chunk"
        break
      fi
      pending+=$chunk  # timed out in the middle of a line: keep the part
    fi
    now_us
    if [ "$NOW" -gt "$deadline" ]; then
      case $state in
        booting) BOOT_REASON="the command had not started after $BOOT_TIMEOUT s" ;;
        running) OUTCOME=timeout ;;
        finished) echo "$PROG: warning: the guest did not power off; killed it" >&2 ;;
      esac
      break
    fi
  done
  kill_qemu
  exec {fd}<&-
  rm -f "$fifo"

  if [ -n "$OUTCOME" ]; then
    :
  elif [ "$state" = finished ]; then
    OUTCOME=finished
  elif [ "$state" = running ]; then
    # the end marker can be lost if the guest powers off too fast; rc is also in the share
    if [[ $(cat "$SHARE/rc" 2>/dev/null) =~ ^[0-9]+$ ]]; then
      RC=$(cat "$SHARE/rc"); OUTCOME=finished; now_us; T_END=$NOW
    else
      OUTCOME=died
    fi
  else
    OUTCOME=boot_failed
  fi
}

now_us; T0=$NOW
for attempt in 1 2; do
  boot_once "$attempt"
  [ "$OUTCOME" = boot_failed ] || break
  {
    echo "$PROG: BOOT FAILURE (attempt $attempt of 2): kernel $LABEL ($KV) never reached the command: $BOOT_REASON."
    echo "$PROG: last console lines of this attempt:"
    awk -v h="=== $PROG: attempt $attempt:" 'index($0, h) == 1 { n = 0; next } { line[n++] = $0 }
      END { if (n == 0) print "(none)"; for (i = (n > 25 ? n - 25 : 0); i < n; i++) print line[i] }' \
      "$LOGFILE" | sed 's/^/    /'
  } >&2
  if [ "$attempt" -eq 1 ]; then
    echo "$PROG: retrying the boot once (for more boot messages: MESHTLS_VM_APPEND=loglevel=7)" >&2
  fi
done

now_us; secs $((NOW - T0)); total=$SECS
case $OUTCOME in
  finished)
    secs $((T_START - T_QEMU)); boot=$SECS
    secs $((T_END - T_START))
    echo "$PROG: exit $RC (kernel $LABEL, boot $boot s, command $SECS s, total $total s)" >&2
    exit "$RC" ;;
  timeout)
    echo "$PROG: TIMEOUT: $1 did not finish within $TIMEOUT s on kernel $LABEL ($KV); the VM was killed (total $total s)" >&2
    exit 124 ;;
  died)
    echo "$PROG: the guest died while the command ran (kernel $LABEL, $KV): no exit code came back; a kernel panic or oops is the likely cause (see the console output above)" >&2
    exit 123 ;;
  *)
    echo "$PROG: ERROR: kernel $LABEL ($KV) failed to boot twice; the command never ran (exit 125)" >&2
    exit 125 ;;
esac
