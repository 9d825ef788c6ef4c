package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// clockTick is the unit of /proc's CPU times (USER_HZ, 100 on Linux).
const clockTick = 10 * time.Millisecond

// cpuTimes returns the CPU time (user and system) each part of the machine
// has used so far: every service of the stack, RabbitMQ, PostgreSQL (all
// its processes) and the bench itself. The difference over a run says
// where an order's CPU goes, which on a machine this size is what limits
// the rate.
func (b *bench) cpuTimes() map[string]time.Duration {
	out := map[string]time.Duration{}
	byPid := map[int]string{os.Getpid(): "bench (load generator)"}
	for _, p := range b.stack.Procs {
		byPid[p.Pid()] = p.Name
	}
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, dir := range dirs {
		pid, _ := strconv.Atoi(filepath.Base(dir))
		name, ok := byPid[pid]
		if !ok {
			comm, _ := os.ReadFile(dir + "/comm")
			switch strings.TrimSpace(string(comm)) {
			case "postgres":
				name = "postgresql"
			case "beam.smp":
				name = "rabbitmq"
			default:
				continue
			}
		}
		if d, err := procCPU(pid); err == nil {
			out[name] += d
		}
	}
	return out
}

// procCPU reads a process's user and system time from /proc/<pid>/stat,
// with the time of the children it has reaped: PostgreSQL's autovacuum
// workers and backends come and go within a window, and their time moves
// to the postmaster when they exit rather than vanishing from the sum
// (which could make a window's difference even negative).
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name, which may hold spaces: state is
	// field 3, utime 14, stime 15, cutime 16 and cstime 17.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(f) < 15 {
		return 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	var ticks int64
	for _, v := range f[11:15] {
		n, _ := strconv.ParseInt(v, 10, 64)
		ticks += n
	}
	return time.Duration(ticks) * clockTick, nil
}

// cpuPerOrder turns two cpuTimes readings into milliseconds of CPU per
// order for each part, and the share of the machine's cores they used.
// It is the average cost: everything used while the orders flowed,
// including what the parts use when idle, divided by the orders.
func cpuPerOrder(before, after map[string]time.Duration, orders int, over time.Duration, cores int) (map[string]float64, float64) {
	per := map[string]float64{}
	var total time.Duration
	for name, t := range after {
		d := t - before[name]
		total += d
		if orders > 0 {
			per[name] = float64(d.Microseconds()) / 1000 / float64(orders)
		}
	}
	return per, total.Seconds() / (over.Seconds() * float64(cores))
}

// cpuPerSecond turns two cpuTimes readings taken over a window into
// milliseconds of CPU per second of the window, for each part.
func cpuPerSecond(before, after map[string]time.Duration, over time.Duration) map[string]float64 {
	per := map[string]float64{}
	for name, t := range after {
		per[name] = float64((t - before[name]).Microseconds()) / 1000 / over.Seconds()
	}
	return per
}

// marginalCPU is each part's CPU per order from two windows at different
// rates: the difference in CPU a second divided by the difference in
// orders a second. What a part spends whatever the rate (timers, GC,
// management stats, the bench's own sampling) cancels out, so only what
// one more order costs remains. It returns the slopes and their sum.
func marginalCPU(high, low map[string]float64, highRate, lowRate float64) (map[string]float64, float64) {
	per := map[string]float64{}
	var sum float64
	for name, h := range high {
		per[name] = (h - low[name]) / (highRate - lowRate)
		sum += per[name]
	}
	return per, sum
}
