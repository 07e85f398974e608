"""The daemon killed with SIGKILL and started again: the segments of the dead
one go with it (they are memory files: nothing is left in /dev/shm to sweep),
the new one makes fresh ones, a client's call in flight fails with a clear
daemon_unreachable error, its next call reconnects by itself, and the objects
it already held stay mapped, valid and unchanged (the mapping outlives the
daemon)."""

from __future__ import annotations

from harness import parse, record, shm_files, wait_until

CYCLES = 5


def test_a_daemon_killed_and_restarted_leaves_no_segment_behind_and_clients_carry_on(daemons, peers):
    d = daemons(pool="48M", segment="16M").start()
    lost = leaked = unclear = idle_failures = 0
    gone = 0
    for cycle in range(CYCLES):
        holder = peers(d)
        holder.ok(f"put keep/{cycle} 1000000 {cycle}")
        holder.ok(f"hold keep/{cycle}")
        holder.ok(f"put big/{cycle} 20000000 {cycle}")  # a dedicated segment
        holder.ok(f"hold big/{cycle}")
        writer = peers(d)
        writer.ok("create half 1000000 1")  # a half-made object when the daemon dies
        idle = peers(d)
        idle.ok("stats")  # connected, then quiet until after the restart
        waiter = peers(d)
        waiter.send("get never 0 60000")
        assert waiter.read_line() == "waiting"
        # The waiter's request is in the daemon once it has a connection more than the others.
        wait_until(lambda: d.stats()["clients"] == 5, "the waiter to connect")
        before = d.segments()
        assert any(".d" in n for n in before) and any(".p" in n for n in before), before

        d.kill9()

        line = waiter.read_line(timeout=60)
        in_flight = parse(line)
        assert in_flight["status"] == "err" and in_flight["code"] == "daemon_unreachable", line
        clear = "closed the connection" in line or "lost" in line
        unclear += not clear
        assert clear, f"the error of the call in flight does not say what happened: {line}"
        # The holder was idle: its call finds the connection closed before
        # sending, tries to connect again, finds the dead daemon's socket with
        # nobody behind it and says so, and how to start one again.
        down = holder.cmd("stats")
        assert down["code"] == "daemon_unreachable" and "has stopped or died" in down["line"] \
            and "Start it again" in down["line"], down
        assert holder.ok("check")["mismatches"] == "0", "a held object changed when the daemon died"
        # Nothing of the dead daemon is left to name or sweep: its segments
        # live on only in the mappings of the clients that hold objects.
        left = shm_files(d.instance)
        leaked += len(left)
        assert not left, f"a killed daemon left files in /dev/shm: {sorted(left)}"
        gone += len(before)

        d.start()
        now = d.segments()
        reused = set(before.values()) & set(now.values())
        leaked += len(reused)
        assert not reused, f"the new daemon serves memory files of the dead one: {sorted(reused)}"

        held = holder.ok("check")
        lost += int(held["mismatches"])
        assert held["held"] == "2" and held["mismatches"] == "0", "a held object changed after the restart"
        # Next calls reconnect by themselves; the new daemon starts empty.
        assert waiter.ok(f"put after/{cycle} 1000 {cycle}")["version"]
        assert holder.cmd(f"get keep/{cycle}")["code"] == "not_found"
        holder.ok(f"put keep/{cycle} 1000000 {cycle}")
        # An idle client's first call finds the old connection closed before
        # anything was sent and goes to the new daemon at once: it does not fail.
        first = idle.cmd("stats")
        idle_failures += first["status"] != "ok"
        assert first["status"] == "ok", first
        # The writer's seal names a create of the dead daemon: it is not sent
        # to the new one, and fails saying the connection was lost.
        sealed = writer.cmd("seal")
        assert sealed["code"] == "daemon_unreachable" and "lost" in sealed["line"], sealed
        writer.ok("stats")
        assert writer.cmd("get half")["code"] == "not_found"
        for p in (holder, writer, idle, waiter):
            assert p.close() == 0
        d.quiet()
        d.delete_all()
    d.stop()
    record("daemon SIGKILL + restart (client waiting in get, 2 held objects, 1 open create)", injected=CYCLES,
           lost=lost, leaked=leaked, segments_gone_with_the_daemon=gone, unclear_errors=unclear,
           failed_first_calls_of_idle_clients=idle_failures)
