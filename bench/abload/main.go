// Command abload measures two or three HTTP targets side by side under
// the same load at the same moment: each of -conns workers holds one
// keep-alive connection to every target and sends to them in turn (A, B,
// C, A, B, C, ...), so every target sees the same machine, whatever else
// runs on it. Sequential rounds (wrk's A then B) move with the host's load
// between rounds; interleaved requests do not.
//
// At saturation a request's latency is what the machine spends on it, so
// the ratio of mean latencies stands for the ratio of throughputs: it
// prints, per round and as the median, B/A = lat(A)/lat(B) (B's speed
// relative to A; 1.000: no cost) and C/B = lat(B)/lat(C).
//
//	go run ./bench/abload -a URL -b URL [-c URL] -body FILE \
//	    -header 'Name: value' ... [-a-header 'Name: value' ...] \
//	    [-conns 16] [-rounds 11] [-seconds 4]
//
// -header is sent to every target; -a-header only to A (the headers B's
// gateway adds, so that both proxies forward the same request). Every
// answer must be 200.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
)

type headers []string

func (h *headers) String() string     { return strings.Join(*h, "; ") }
func (h *headers) Set(v string) error { *h = append(*h, v); return nil }

func main() {
	var all, onlyA headers
	a := flag.String("a", "", "target A (the baseline)")
	b := flag.String("b", "", "target B")
	c := flag.String("c", "", "target C (optional)")
	bodyFile := flag.String("body", "", "request body file")
	conns := flag.Int("conns", 16, "workers, each with one connection per target")
	rounds := flag.Int("rounds", 11, "rounds")
	secs := flag.Float64("seconds", 4, "seconds per round")
	flag.Var(&all, "header", "a header sent to every target (repeatable)")
	flag.Var(&onlyA, "a-header", "a header sent to A only (repeatable)")
	flag.Parse()
	if *a == "" || *b == "" || *bodyFile == "" {
		flag.Usage()
		os.Exit(2)
	}
	body, err := os.ReadFile(*bodyFile)
	if err != nil {
		fail("%v", err)
	}
	targets := []target{{name: "A", url: *a, hdr: parse(append(append(headers{}, all...), onlyA...))},
		{name: "B", url: *b, hdr: parse(all)}}
	if *c != "" {
		targets = append(targets, target{name: "C", url: *c, hdr: parse(all)})
	}

	fmt.Printf("abload: %d rounds of %gs, %d workers, each sending to %d targets in turn, %d-byte body\n",
		*rounds, *secs, *conns, len(targets), len(body))
	fmt.Printf("%-6s", "round")
	for _, t := range targets {
		fmt.Printf(" %10s", "lat-"+t.name+"-us")
	}
	fmt.Printf(" %8s", "B/A")
	if len(targets) == 3 {
		fmt.Printf(" %8s", "C/B")
	}
	fmt.Println()
	run(targets, body, *conns, time.Second) // warm-up
	var ba, cb []float64
	for r := 1; r <= *rounds; r++ {
		lat := run(targets, body, *conns, time.Duration(*secs*float64(time.Second)))
		fmt.Printf("%-6d", r)
		for _, l := range lat {
			fmt.Printf(" %10.1f", l)
		}
		ba = append(ba, lat[0]/lat[1])
		fmt.Printf(" %8.3f", lat[0]/lat[1])
		if len(lat) == 3 {
			cb = append(cb, lat[1]/lat[2])
			fmt.Printf(" %8.3f", lat[1]/lat[2])
		}
		fmt.Println()
	}
	fmt.Printf("abload: median B/A = %.3f (range %.3f-%.3f)\n", median(ba), slices.Min(ba), slices.Max(ba))
	if len(cb) > 0 {
		fmt.Printf("abload: median C/B = %.3f (range %.3f-%.3f)\n", median(cb), slices.Min(cb), slices.Max(cb))
	}
}

type target struct {
	name, url string
	hdr       http.Header
}

func parse(hs headers) http.Header {
	h := http.Header{"Content-Type": {"application/json"}}
	for _, kv := range hs {
		k, v, ok := strings.Cut(kv, ":")
		if !ok {
			fail("bad header %q: want 'Name: value'", kv)
		}
		h[http.CanonicalHeaderKey(strings.TrimSpace(k))] = []string{strings.TrimSpace(v)}
	}
	return h
}

// run sends in turn to every target from conns workers for d and returns
// each target's mean latency in microseconds.
func run(targets []target, body []byte, conns int, d time.Duration) []float64 {
	var mu sync.Mutex
	sum := make([]time.Duration, len(targets))
	n := make([]int, len(targets))
	var wg sync.WaitGroup
	stop := time.Now().Add(d)
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			clients := make([]*http.Client, len(targets))
			for i := range clients {
				clients[i] = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1, DisableCompression: true}}
			}
			mySum := make([]time.Duration, len(targets))
			myN := make([]int, len(targets))
			for time.Now().Before(stop) {
				for i, t := range targets {
					req, _ := http.NewRequest(http.MethodPost, t.url, bytes.NewReader(body))
					req.Header = t.hdr.Clone()
					t0 := time.Now()
					resp, err := clients[i].Do(req)
					if err != nil {
						fail("%s: %v", t.name, err)
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						fail("%s answered %d", t.name, resp.StatusCode)
					}
					mySum[i] += time.Since(t0)
					myN[i]++
				}
			}
			mu.Lock()
			for i := range targets {
				sum[i] += mySum[i]
				n[i] += myN[i]
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	out := make([]float64, len(targets))
	for i := range out {
		out[i] = float64(sum[i].Microseconds()) / float64(n[i])
	}
	return out
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "abload: "+format+"\n", args...)
	os.Exit(1)
}
