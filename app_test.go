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
	a := &App{servers: map[string]*caddyhttp.Server{"srv0": web, "srv1": hooks, "srv2": other}}
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
