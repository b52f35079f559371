# Shared by scripts/stack.sh, kube.sh and node.sh: background processes tracked by pid
# files in $RUN_DIR (set by the caller), logged through the caller's `log`.

# Whether the process of NAME's pid file is running.
pid_alive() { [ -f "$RUN_DIR/$1.pid" ] && kill -0 "$(cat "$RUN_DIR/$1.pid")" 2>/dev/null; }

# Whether something listens on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# spawn NAME CMD…: runs CMD in the background (output in $RUN_DIR/NAME.log) unless NAME
# already runs.
spawn() {
  local name=$1; shift
  if pid_alive "$name"; then return; fi
  log "starting $name"
  nohup "$@" >"$RUN_DIR/$name.log" 2>&1 &
  echo $! >"$RUN_DIR/$name.pid"
}

# stop_pid NAME: SIGTERM, up to 5 s to exit, then SIGKILL; the pid file goes.
stop_pid() {
  local name=$1 pid
  pid_alive "$name" || { rm -f "$RUN_DIR/$name.pid"; return 0; }
  pid=$(cat "$RUN_DIR/$name.pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$RUN_DIR/$name.pid"
  log "stopped $name"
}
