#!/bin/sh
# /init of the fog boot environment, written by `fog bootenv build`. It mounts the kernel's file
# systems, loads the NIC and disk drivers, takes a DHCP lease on every card, reads fog.* from
# the kernel command line and does what fog.action says. Every step prints a `fog-init:` line on
# the console. On any failure it prints the error and starts a shell: never a reboot loop.
# With FOG_INIT_LIB=1 it only defines its functions (tests source it under busybox sh).

say() { echo "fog-init: $*"; }

# A shell on the console, again whenever it exits (PID 1 must not end).
shell_forever() {
  export PS1='fog# '
  while :; do
    setsid cttyhack sh
    say "shell exited; starting another (reboot -f to restart)"
    sleep 1
  done
}

rescue() {
  say "ERROR: $*"
  say "not rebooting: starting a shell (reboot -f to restart, poweroff -f to stop)"
  shell_forever
}

# parse_cmdline TEXT: the fog.* arguments of a kernel command line into FOG_* variables.
parse_cmdline() {
  FOG_MASTER='' FOG_NODE='' FOG_TASK='' FOG_ACTION='' FOG_MAC='' FOG_TOKEN='' FOG_IMAGE='' FOG_DISK=''
  set -f
  for word in $1; do
    case "$word" in
      fog.master=*) FOG_MASTER=${word#*=} ;;
      fog.node=*) FOG_NODE=${word#*=} ;;
      fog.task=*) FOG_TASK=${word#*=} ;;
      fog.action=*) FOG_ACTION=${word#*=} ;;
      fog.mac=*) FOG_MAC=${word#*=} ;;
      fog.token=*) FOG_TOKEN=${word#*=} ;;
      fog.image=*) FOG_IMAGE=${word#*=} ;;
      fog.disk=*) FOG_DISK=${word#*=} ;;
    esac
  done
  set +f
}

load_modules() {
  loaded=0 total=0 failed=
  for m in $(cat /lib/modules/order 2>/dev/null); do
    total=$((total + 1))
    if insmod "/lib/modules/$m.ko" 2>/dev/null; then
      loaded=$((loaded + 1))
    else
      failed="$failed $m"
    fi
  done
  say "loaded $loaded of $total kernel modules${failed:+; not loaded:$failed}"
}

# Every card but lo gets a lease attempt, all at once; true when one got an address.
net_up() {
  n=0
  while [ $n -lt 50 ] && [ "$(ls /sys/class/net | grep -cv '^lo$')" = 0 ]; do
    sleep 0.2
    n=$((n + 1))
  done
  ip link set lo up
  for d in /sys/class/net/*; do
    i=${d##*/}
    [ "$i" = lo ] && continue
    ip link set "$i" up
    (
      if udhcpc -i "$i" -n -q -t 8 -T 2 -s /etc/udhcpc/default.script > /dev/null 2>&1; then
        say "network up on $i $(cat "/run/fog-ip-$i" 2>/dev/null)"
      else
        say "no DHCP lease on $i"
      fi
    ) &
  done
  wait
  ls /run/fog-ip-* > /dev/null 2>&1
}

need_master() {
  [ -n "$FOG_MASTER" ] || rescue "no fog.master= on the kernel command line"
  export FOG_MASTER
  [ -n "$FOG_TOKEN" ] && export FOG_TOKEN
}

finish() {
  sync
  case "$1" in
    reboot) say "rebooting"; reboot -f ;;
    poweroff) say "powering off"; poweroff -f ;;
    *) say "done; staying up"; shell_forever ;;
  esac
  rescue "$1 failed"
}

do_register() {
  need_master
  say "registering with $FOG_MASTER"
  fog agent register || rescue "registration with $FOG_MASTER failed (see above)"
  say "registered; rebooting in 5 s"
  sleep 5
  finish reboot
}

do_sysinfo() {
  fog agent inventory || say "cannot read the inventory"
  printf 'fog-init: press Enter to reboot '
  read -r _
  finish reboot
}

# The boot menu's deploy and capture: no task yet, so an operator's admin token creates one.
ask_for_task() {
  stty -echo 2> /dev/null
  say "$FOG_ACTION from the boot menu: an admin token creates the task"
  printf 'admin token: '
  read -r FOG_TOKEN
  stty echo 2> /dev/null
  echo
  [ -n "$FOG_TOKEN" ] || rescue "no token given"
  export FOG_TOKEN
  if [ -z "$FOG_IMAGE" ] && { [ "$FOG_ACTION" = deploy ] || [ "$FOG_ACTION" = capture ]; }; then
    printf 'image name (empty: the host'"'"'s image): '
    read -r FOG_IMAGE
    echo
  fi
  fog agent register || rescue "registration with $FOG_MASTER failed (see above)"
}

do_task() {
  need_master
  [ -n "$FOG_TASK" ] || ask_for_task
  set -- agent run --no-power
  [ -n "$FOG_MAC" ] && set -- "$@" --mac "$FOG_MAC"
  [ -n "$FOG_DISK" ] && set -- "$@" --disk-rule "$FOG_DISK"
  if [ -z "$FOG_TASK" ]; then
    set -- "$@" --request "$FOG_ACTION"
    [ -n "$FOG_IMAGE" ] && set -- "$@" --image "$FOG_IMAGE"
  fi
  say "running the agent: $FOG_ACTION${FOG_TASK:+ (task $FOG_TASK)} against $FOG_MASTER"
  fog --json "$@" > /tmp/agent.json || {
    cat /tmp/agent.json
    rescue "the agent failed (see above)"
  }
  after=$(sed -n 's/.*"after": *"\([a-z]*\)".*/\1/p' /tmp/agent.json | head -n 1)
  say "task complete; then: ${after:-reboot}"
  finish "${after:-reboot}"
}

# The boot menu's "Join a multicast session": no task, so no token; the session of an image
# announced on this segment (empty name: the first announced) is deployed to the disk.
do_join() {
  printf 'session (image name, empty: the first announced): '
  read -r FOG_IMAGE
  echo
  ip=$(cat "${FOG_RUN:-/run}"/fog-ip-* 2> /dev/null | head -n 1)
  [ -n "$ip" ] || rescue "no network address to hear a session on"
  set -- multicast receive --interface "$ip" --wait 600
  # Only the node's sessions: anyone on the segment can announce one.
  node=${FOG_MASTER#*://}
  node=${node%%/*}
  [ -n "$node" ] && set -- "$@" --only-from "${node%:*}"
  [ -n "$FOG_IMAGE" ] && set -- "$@" --session "$FOG_IMAGE"
  [ -n "$FOG_DISK" ] && set -- "$@" --disk-rule "$FOG_DISK"
  say "joining ${FOG_IMAGE:-the first announced session} on $ip"
  fog "$@" || rescue "the multicast deploy failed (see above)"
  say "deployed; rebooting in 5 s"
  sleep 5
  finish reboot
}

# Secure Boot as the kernel found it (its own log line, from the firmware's variable) and the
# lockdown it implies (securityfs): what the signed chain led to.
secure_boot_state() {
  local state=off lockdown=none
  [ -d /sys/firmware/efi ] || state="off (BIOS)"
  dmesg | grep -q "secureboot: Secure boot enabled" && state=on
  mkdir -p /sys/kernel/security
  mount -t securityfs securityfs /sys/kernel/security 2> /dev/null
  [ -r /sys/kernel/security/lockdown ] && lockdown=$(sed 's/.*\[\(.*\)\].*/\1/' /sys/kernel/security/lockdown)
  echo "Secure Boot $state, lockdown $lockdown"
}

main() {
  export PATH=/bin:/sbin:/usr/bin:/usr/sbin
  /bin/busybox --install -s /bin
  mkdir -p /proc /sys /dev /run /tmp
  mount -t proc proc /proc
  mount -t sysfs sysfs /sys
  mount -t devtmpfs devtmpfs /dev 2> /dev/null
  mkdir -p /dev/pts
  mount -t devpts devpts /dev/pts
  exec < /dev/console > /dev/console 2>&1
  echo 4 > /proc/sys/kernel/printk
  say "fog boot environment, kernel $(uname -r); $(secure_boot_state)"
  parse_cmdline "$(cat /proc/cmdline)"
  say "action ${FOG_ACTION:-shell}${FOG_MASTER:+, master $FOG_MASTER}"
  load_modules
  if ! net_up; then
    case "$FOG_ACTION" in
      shell | sysinfo | debug | '') say "no network: no card got a DHCP lease" ;;
      *) rescue "no network: no card got a DHCP lease" ;;
    esac
  fi
  case "$FOG_ACTION" in
    shell | debug | '') shell_forever ;;
    register) do_register ;;
    sysinfo) do_sysinfo ;;
    deploy | capture | inventory | wipe_fast | wipe_full | multicast) do_task ;;
    join) do_join ;;
    *) rescue "unknown fog.action=$FOG_ACTION" ;;
  esac
}

[ -n "$FOG_INIT_LIB" ] || main
