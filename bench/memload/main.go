// Command memload measures the gateway's memory under concurrent uploads:
// it runs bin/caddy in front of an upstream that holds every request until
// all have arrived, sends N uploads of max_body bytes at once, and reports
// the gateway's peak RSS above idle as a multiple of the bodies' bytes.
// It does so twice, side by side: (A) plain reverse_proxy, which streams
// bodies through without holding them, and (B) reready_verify +
// reverse_proxy, which holds each body until the upstream round trip ends.
// B-A is what the module adds; target: at most 1.5 x the bodies.
//
//	go run ./bench/memload [-n 256] [-size 1048576] [-caddy bin/caddy]
package main

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha512"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const secret = "ssk_memload_8c1f5e0a2b7d4c96"

func main() {
	n := flag.Int("n", 256, "concurrent uploads")
	size := flag.Int("size", 1<<20, "body size in bytes, also max_body")
	caddyBin := flag.String("caddy", "bin/caddy", "Caddy binary built with the module")
	flag.Parse()
	bodyBytes := int64(*n) * int64(*size)
	fmt.Printf("memload: %d concurrent uploads of %d bytes (%.1f MiB of bodies), held by the upstream until all arrived\n",
		*n, *size, mib(bodyBytes))
	var above [2]int64
	for i, verify := range []bool{false, true} {
		idle, peak, err := run(*n, *size, *caddyBin, verify)
		if err != nil {
			fmt.Fprintln(os.Stderr, "memload:", err)
			os.Exit(1)
		}
		above[i] = peak - idle
		fmt.Printf("memload: %s RSS idle %.1f MiB, peak %.1f MiB, above idle %.1f MiB = %.3f x the bodies\n",
			[]string{"A reverse_proxy alone         ", "B reready_verify+reverse_proxy"}[i], mib(idle), mib(peak), mib(above[i]), float64(above[i])/float64(bodyBytes))
	}
	added := float64(above[1]-above[0]) / float64(bodyBytes)
	fmt.Printf("memload: added by reready_verify (B-A) = %.3f x the bodies (target <= 1.5)\n", added)
	if added > 1.5 {
		fmt.Fprintln(os.Stderr, "memload: over target")
		os.Exit(1)
	}
}

func run(n, size int, caddyBin string, verify bool) (idle, peak int64, err error) {
	// Upstream: reads each body, then holds the answer until all n arrived
	// (or 30 s pass), so the gateway holds n bodies at once.
	var arrived atomic.Int64
	all := make(chan struct{})
	var once sync.Once
	up := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.Copy(io.Discard, r.Body)
		if r.Header.Get("X-Warmup") == "" {
			if int(b) != size {
				http.Error(w, "short body", 500)
				return
			}
			if arrived.Add(1) == int64(n) {
				once.Do(func() { close(all) })
			}
			select {
			case <-all:
			case <-time.After(30 * time.Second):
			}
		}
		w.WriteHeader(200)
	})}
	upLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, 0, err
	}
	go up.Serve(upLn)
	defer up.Close()

	port, admin := freePort(), freePort()
	dir, err := os.MkdirTemp("", "memload")
	if err != nil {
		return 0, 0, err
	}
	defer os.RemoveAll(dir)
	cfg := fmt.Sprintf(`{
	admin 127.0.0.1:%d
	default_bind 127.0.0.1
}
http://127.0.0.1:%d {
	reverse_proxy %s
}
`, admin, port, upLn.Addr())
	if verify {
		cfg = fmt.Sprintf(`{
	admin 127.0.0.1:%d
	default_bind 127.0.0.1
}
http://127.0.0.1:%d {
	reready_verify {
		secret %s
		max_body %d
		replay off
	}
	reverse_proxy %s
}
`, admin, port, secret, size, upLn.Addr())
	}
	cfgPath := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return 0, 0, err
	}
	var logs bytes.Buffer
	cmd := exec.Command(caddyBin, "run", "--config", cfgPath, "--adapter", "caddyfile")
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		return 0, 0, err
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	target := fmt.Sprintf("http://127.0.0.1:%d/", port)
	if err := waitUp(fmt.Sprintf("127.0.0.1:%d", port)); err != nil {
		return 0, 0, fmt.Errorf("%v\n%s", err, logs.String())
	}

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: n, MaxConnsPerHost: n}, Timeout: 60 * time.Second}
	send := func(body []byte, warm bool) (int, error) {
		req, _ := http.NewRequest(http.MethodPost, target, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-ReReady-Signature-512", sign(body))
		if warm {
			req.Header.Set("X-Warmup", "1")
		}
		resp, err := client.Do(req)
		if err != nil {
			return 0, err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	// Warm up code paths with small requests, then let the heap settle.
	for i := 0; i < 20; i++ {
		if code, err := send(payload(i, 300), true); err != nil || code != 200 {
			return 0, 0, fmt.Errorf("warm-up request: %d %v\n%s", code, err, logs.String())
		}
	}
	time.Sleep(500 * time.Millisecond)
	idle, _, err = rss(cmd.Process.Pid)
	if err != nil {
		return 0, 0, err
	}

	bodies := make([][]byte, n)
	for i := range bodies {
		bodies[i] = payload(1000+i, size)
	}
	var wg sync.WaitGroup
	var failed atomic.Int64
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if code, err := send(bodies[i], false); err != nil || code != 200 {
				failed.Add(1)
				fmt.Fprintf(os.Stderr, "upload %d: %d %v\n", i, code, err)
			}
		}(i)
	}
	wg.Wait()
	_, peak, err = rss(cmd.Process.Pid)
	if err != nil {
		return 0, 0, err
	}
	if failed.Load() > 0 {
		return 0, 0, fmt.Errorf("%d uploads failed\n%s", failed.Load(), logs.String())
	}
	return idle, peak, nil
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// rss returns the current and peak resident set size of pid in bytes.
func rss(pid int) (cur, peak int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			cur = v << 10
		case "VmHWM:":
			peak = v << 10
		}
	}
	return cur, peak, nil
}

func payload(i, size int) []byte {
	id := fmt.Sprintf("e025d043-c41d-4167-8bd3-%012d", i)
	base := `{"device_return_id":"` + id + `","serial_number":null,"state":"complete","test":false,"ticket_url":null,"url":"https://www.reready.co/device_returns/` + id + `","note":"`
	pad := size - len(base) - 2
	if pad < 0 {
		pad = 0
	}
	return []byte(base + strings.Repeat("x", pad) + `"}`)
}

func sign(body []byte) string {
	t := strconv.FormatInt(time.Now().Unix(), 10)
	m := hmac.New(sha512.New, []byte(secret))
	m.Write([]byte(t + "."))
	m.Write(body)
	return "t=" + t + ",v=" + hex.EncodeToString(m.Sum(nil))
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func waitUp(addr string) error {
	for i := 0; i < 150; i++ {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("gateway did not listen on %s", addr)
}
