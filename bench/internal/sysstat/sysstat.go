// Package sysstat reads the process measurements the benchmarks report: CPU
// time from getrusage, resident memory from /proc/self/status, and Go runtime
// memory statistics; and it raises the open-file limit.
package sysstat

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"time"
)

// Snapshot is one reading of the process's counters.
type Snapshot struct {
	At         time.Time
	CPU        time.Duration // user + system CPU time of the whole process
	Mallocs    uint64        // cumulative heap allocations (runtime.MemStats)
	TotalAlloc uint64        // cumulative bytes allocated
	NumGC      uint32
}

// Take reads CPU time and allocation counters. It calls runtime.ReadMemStats,
// which stops the world briefly.
func Take() Snapshot {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return Snapshot{At: time.Now(), CPU: CPUTime(), Mallocs: ms.Mallocs, TotalAlloc: ms.TotalAlloc, NumGC: ms.NumGC}
}

// Delta is the difference between two snapshots.
type Delta struct {
	Wall    time.Duration
	CPU     time.Duration
	Mallocs uint64
	Bytes   uint64
	GCs     uint32
}

// Sub returns s - prev.
func (s Snapshot) Sub(prev Snapshot) Delta {
	return Delta{
		Wall:    s.At.Sub(prev.At),
		CPU:     s.CPU - prev.CPU,
		Mallocs: s.Mallocs - prev.Mallocs,
		Bytes:   s.TotalAlloc - prev.TotalAlloc,
		GCs:     s.NumGC - prev.NumGC,
	}
}

// Memory is the process's memory at one moment.
type Memory struct {
	RSS        int64 // VmRSS from /proc/self/status, bytes (0 if unavailable)
	HeapAlloc  int64 // live heap objects (after a GC if Forced)
	HeapInuse  int64
	StackInuse int64
	Sys        int64 // everything the Go runtime obtained from the OS
	Goroutines int
}

// ReadMemory reads RSS and the runtime's memory statistics without forcing a
// collection.
func ReadMemory() Memory {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	rss, _ := RSS()
	return Memory{
		RSS:        rss,
		HeapAlloc:  int64(ms.HeapAlloc),
		HeapInuse:  int64(ms.HeapInuse),
		StackInuse: int64(ms.StackInuse),
		Sys:        int64(ms.Sys),
		Goroutines: runtime.NumGoroutine(),
	}
}

// RSS returns VmRSS of this process in bytes, from /proc/self/status.
func RSS() (int64, error) {
	return procStatusField("VmRSS:")
}

// HWM returns VmHWM (peak RSS) of this process in bytes.
func HWM() (int64, error) {
	return procStatusField("VmHWM:")
}

func procStatusField(name string) (int64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Bytes()
		if !bytes.HasPrefix(line, []byte(name)) {
			continue
		}
		f := bytes.Fields(line[len(name):])
		if len(f) < 1 {
			break
		}
		kb, err := strconv.ParseInt(string(f[0]), 10, 64)
		if err != nil {
			return 0, err
		}
		return kb * 1024, nil
	}
	return 0, fmt.Errorf("sysstat: %s not found in /proc/self/status", name)
}
