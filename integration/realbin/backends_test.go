//go:build fullsuite

package realbin

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os/exec"
	"path"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/reready-verify/caddy-reready-verify/internal/rrtest/harness"
)

// The storages the queue's fleet and fault tests run on: Caddy's
// file_system, and Redis through caddy.storage.reready_test_redis
// (integration/teststorage), a test storage with the semantics of the
// caddy-storage-redis module, in bin/caddy-test.

// backend is a Caddy storage a test's gateways share.
type backend struct {
	name   string
	bin    string // the Caddy binary with that storage
	global string // the storage global option
	redis  *redisServer
	items  func(t *testing.T) []string // the names of the stored queue items
}

// storages are the backends every fleet and fault scenario runs on.
var storages = []string{"file_system", "redis"}

// newBackend makes a fresh, empty storage of the named kind for a test.
func newBackend(t *testing.T, name string) *backend {
	t.Helper()
	switch name {
	case "file_system":
		dir := t.TempDir()
		return &backend{name: name, bin: caddyBin, global: storageGlobal(dir), items: func(t *testing.T) []string {
			var out []string
			for _, f := range queueFiles(t, dir) {
				if validID(f) {
					out = append(out, f)
				}
			}
			return out
		}}
	case "redis":
		r := startRedis(t)
		return redisBackend(t, r, "")
	}
	t.Fatalf("no storage %q", name)
	return nil
}

// redisBackend is a storage in r under a prefix of its own; opts are more
// lines of the storage block (lock_ttl 2s, say).
func redisBackend(t *testing.T, r *redisServer, opts string) *backend {
	t.Helper()
	var b [6]byte
	_, _ = rand.Read(b[:])
	prefix := "caddy-" + hex.EncodeToString(b[:])
	global := fmt.Sprintf("\tstorage reready_test_redis {\n\t\taddress %s\n\t\tkey_prefix %s\n\t\t%s\n\t}", r.addr, prefix, opts)
	return &backend{name: "redis", bin: caddyTestBin(t), global: global, redis: r, items: func(t *testing.T) []string {
		var out []string
		for _, m := range strings.Fields(r.cli(t, "ZRANGE", path.Join(prefix, "reready_verify/queue/items"), "0", "-1")) {
			if validID(m) {
				out = append(out, m)
			}
		}
		return out
	}}
}

// gateway starts a gateway on the backend, serving site; port 0 picks a
// free one, another gateway's port makes a fleet behind one address.
func (b *backend) gateway(t *testing.T, port int, site string, secrets ...string) *gateway {
	t.Helper()
	return startGatewayBinOn(t, b.bin, port, b.global, site, nil, secrets...)
}

// redisServer is a redis-server of the test's own, on a free port, with
// its files in a temporary directory, stopped when the test ends.
type redisServer struct {
	addr   string
	port   int
	cmd    *exec.Cmd
	out    harness.SyncBuffer
	exited chan struct{}
}

func startRedis(t *testing.T) *redisServer {
	t.Helper()
	port, err := harness.ReservePort()
	if err != nil {
		t.Fatal(err)
	}
	r := &redisServer{addr: fmt.Sprintf("127.0.0.1:%d", port), port: port}
	r.cmd = exec.Command("redis-server", "--port", fmt.Sprint(port), "--bind", "127.0.0.1", "--dir", t.TempDir(),
		"--save", "", "--appendonly", "no", "--protected-mode", "no")
	r.cmd.Stdout, r.cmd.Stderr = &r.out, &r.out
	if err := r.cmd.Start(); err != nil {
		t.Fatalf("redis-server: %v (scripts/deps.sh installs it)", err)
	}
	r.exited = make(chan struct{})
	go func() { r.cmd.Wait(); close(r.exited) }()
	t.Cleanup(func() {
		r.cmd.Process.Signal(syscall.SIGCONT)
		r.cmd.Process.Kill()
		<-r.exited
	})
	if err := waitListening(r.addr, r.exited); err != nil {
		t.Fatalf("redis-server: %v\n%s", err, r.out.String())
	}
	return r
}

// cli runs redis-cli against r and returns its output.
func (r *redisServer) cli(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("redis-cli", append([]string{"-h", "127.0.0.1", "-p", fmt.Sprint(r.port)}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// pause stops the server for d (SIGSTOP, then SIGCONT): every call waits
// or times out, and locks expire meanwhile as their TTL runs out.
func (r *redisServer) pause(t *testing.T, d time.Duration) {
	t.Helper()
	if err := r.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	time.Sleep(d)
	if err := r.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
}
