package rereadyverify

import (
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// testApp is a reready app for unit tests: its own journal, and a queue
// in a temporary file_system storage. No worker runs.
func testApp(tb testing.TB) *App {
	tb.Helper()
	return &App{
		logger:  zap.NewNop(),
		journal: newJournal(1000),
		queue:   newQueue(&certmagic.FileStorage{Path: tb.TempDir()}, zap.NewNop()),
	}
}

func TestServerForAQueuedDelivery(t *testing.T) {
	web := &caddyhttp.Server{Listen: []string{":443"}}
	hooks := &caddyhttp.Server{Listen: []string{"127.0.0.1:8080-8090"}}
	other := &caddyhttp.Server{Listen: []string{"unix//run/caddy.sock"}}
	a := &App{}
	a.routes.Store(&routing{servers: map[string]*caddyhttp.Server{"srv0": web, "srv1": hooks, "srv2": other}})
	tests := []struct {
		name string
		port int
		want *caddyhttp.Server
	}{
		{"srv1", 8085, hooks}, // by port and name
		{"srv0", 8085, hooks}, // renamed: the port decides
		{"srv9", 443, web},    // gone name, port still served
		{"srv0", 9999, web},   // nothing listens there: by name
		{"srv9", 9999, nil},   // neither
		{"srv2", 0, other},    // no port recorded: by name
		{"srv9", 0, nil},
	}
	for _, tc := range tests {
		if got := a.server(tc.name, tc.port); got != tc.want {
			t.Errorf("server(%q, %d) = %v, want %v", tc.name, tc.port, got, tc.want)
		}
	}
}

// The admin API follows the running config: a reload makes the new app
// live; a config that fails to start (Caddy stops its apps again) leaves
// the previous one live, not none.
func TestLiveAppAcrossReloads(t *testing.T) {
	withLiveApp(t, nil)
	old, next, failed := testApp(t), testApp(t), testApp(t)
	step := func(what string, f func() error, want *App) {
		t.Helper()
		if err := f(); err != nil {
			t.Fatal(err)
		}
		if got := liveApp.Load(); got != want {
			t.Fatalf("after %s the live app is %p, want %p", what, got, want)
		}
	}
	step("the first start", old.Start, old)
	step("a reload's start", next.Start, next)
	step("the old config's stop", old.Stop, next)
	if next.prev.Load() != nil {
		t.Fatal("the live app still holds the stopped one")
	}
	step("a failing config's start", failed.Start, failed)
	step("its stop", failed.Stop, next)
	step("the last stop", next.Stop, nil)
}
