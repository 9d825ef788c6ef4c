package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// profile starts fetching a CPU profile, of up to 10 s but no longer than
// the hold, from every service that serves /debug/pprof/profile, when
// DABBA_BENCH_PPROF=1; the channel closes when all are in. A service that
// answers 404 does not serve one and is skipped. Profiling costs CPU, so
// the hold's CPU figures of a profiled run are a little high.
func (b *bench) profile(ctx context.Context) <-chan struct{} {
	return b.profileFor(ctx, min(10*time.Second, b.sz.Hold), "")
}

// profileFor is profile for a step of another length: profiles of up to d,
// in files named after the service and tag.
func (b *bench) profileFor(ctx context.Context, d time.Duration, tag string) <-chan struct{} {
	done := make(chan struct{})
	if !b.pprof {
		close(done)
		return done
	}
	// The directory outlives the run, unlike the binaries', so the
	// profiles can be read afterwards.
	dir, err := os.MkdirTemp("", "dabba-bench-pprof-")
	if err != nil {
		fmt.Println("bench: no CPU profiles:", err)
		close(done)
		return done
	}
	seconds := max(1, int(d.Seconds()))
	var mu sync.Mutex
	var got, skipped []string
	var wg sync.WaitGroup
	for _, p := range b.stack.Procs {
		wg.Go(func() {
			err := fetchProfile(ctx, fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", p.Addr, seconds),
				filepath.Join(dir, p.Name+tag+".pprof"))
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				skipped = append(skipped, fmt.Sprintf("%s (%v)", p.Name, err))
				return
			}
			got = append(got, p.Name)
		})
	}
	go func() {
		defer close(done)
		wg.Wait()
		if len(got) == 0 {
			os.Remove(dir)
			fmt.Printf("bench: no CPU profiles: %s\n", strings.Join(skipped, ", "))
			return
		}
		fmt.Printf("bench: %d s CPU profiles of %s in %s (go tool pprof %s)\n", seconds, strings.Join(got, ", "), dir,
			filepath.Join(dir, got[0]+tag+".pprof"))
		if len(skipped) > 0 {
			fmt.Printf("bench: no CPU profile from %s\n", strings.Join(skipped, ", "))
		}
	}()
	return done
}

// fetchProfile saves the profile at url to path.
func fetchProfile(ctx context.Context, url, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+benchAdminToken)
	resp, err := httpClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%d", resp.StatusCode)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
