// Package harness is the integration harness the real-binary suite
// (integration/realbin) and the browser suite (integration/browser) share,
// so the two do not drift: a fake upstream app that can go down and come
// back and answers by a rule (upstream.go), ReReady's side — the event and
// its body, and the independent signers of integration/signers
// (reready.go) — and a bin/caddy started on a Caddyfile with free ports and
// stopped when the test ends (gateway.go).
//
// Only tests import it, and it imports only the standard library, so the
// browser module can use it without taking on Caddy. Every server binds
// 127.0.0.1 and every wait is bounded.
package harness

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// Bounds on the harness's waits, so a broken build, binary or app fails
// instead of hanging.
const (
	BuildTimeout = 15 * time.Minute // a cold xcaddy build takes ~90 s
	ReadyTimeout = 15 * time.Second // a process or app to listen
	ReplyTimeout = 10 * time.Second // one request
)

// modulePath is the root module's path, the first line of its go.mod.
const modulePath = "github.com/reready-verify/caddy-reready-verify"

var rootDir struct {
	once sync.Once
	dir  string
	err  error
}

// Root returns the repository root: the nearest directory at or above the
// working directory whose go.mod declares the root module (the browser
// module's go.mod, in between, declares another).
func Root() (string, error) {
	rootDir.once.Do(func() {
		dir, err := os.Getwd()
		if err != nil {
			rootDir.err = err
			return
		}
		for {
			if f, err := os.Open(filepath.Join(dir, "go.mod")); err == nil {
				sc := bufio.NewScanner(f)
				first := sc.Scan() && bytes.Equal(bytes.TrimSpace(sc.Bytes()), []byte("module "+modulePath))
				f.Close()
				if first {
					rootDir.dir = dir
					return
				}
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				rootDir.err = errors.New("no directory above the working directory holds the root module's go.mod")
				return
			}
			dir = parent
		}
	})
	return rootDir.dir, rootDir.err
}

// Build runs scripts/build-caddy.sh with args (none: bin/caddy; "test":
// bin/caddy-test) and returns the binary's path. The script rebuilds only
// when the module's sources changed.
func Build(args ...string) (string, error) {
	root, err := Root()
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), BuildTimeout)
	defer cancel()
	build := exec.CommandContext(ctx, filepath.Join(root, "scripts", "build-caddy.sh"), args...)
	build.Dir = root
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return "", fmt.Errorf("scripts/build-caddy.sh %v: %v", args, err)
	}
	name := "caddy"
	if len(args) > 0 {
		name += "-" + args[0]
	}
	return filepath.Join(root, "bin", name), nil
}

// CaddyBin returns the gateway binary: $REALBIN_CADDY when set (another
// build of the same tree, such as one with the race detector:
// XCADDY_RACE_DETECTOR=1 xcaddy build ...), else bin/caddy, built if needed.
func CaddyBin() (string, error) {
	if bin := os.Getenv("REALBIN_CADDY"); bin != "" {
		return bin, nil
	}
	return Build()
}

// handedOut holds every port ReservePort returned: a port reserved for an
// app that is down (nothing listens on it yet) must not be handed to a
// gateway, which would then proxy to itself.
var handedOut = struct {
	sync.Mutex
	ports map[int]bool
}{ports: map[int]bool{}}

// ReservePort returns a TCP port on 127.0.0.1 that was free a moment ago
// and that no earlier call returned.
func ReservePort() (int, error) {
	handedOut.Lock()
	defer handedOut.Unlock()
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !handedOut.ports[port] {
			handedOut.ports[port] = true
			return port, nil
		}
	}
}

// FreePort is ReservePort for a test: it fails the test on an error.
func FreePort(t testing.TB) int {
	t.Helper()
	port, err := ReservePort()
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// WaitUntil polls cond until it holds, failing the test with what once
// timeout passes.
func WaitUntil(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", timeout, what)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// SyncBuffer collects a process's output for failure messages; it is safe
// to write and read at once.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
