package integration

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddytest"
	"github.com/caddyserver/certmagic"
)

// Ports of the in-process Caddy that caddytest starts, picked free on
// 127.0.0.1 when the tests start, and the site its tests address.
var (
	httpPort, httpsPort int
	siteHost            string // localhost:<httpPort>
	site                string // http://localhost:<httpPort>
)

// TestMain picks free ports for caddytest's admin endpoint and the HTTP
// servers, and keeps Caddy's storage and config autosave in a temporary
// directory instead of the user's home.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "reready-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := run(m, dir)
	os.RemoveAll(dir)
	os.Exit(code)
}

func run(m *testing.M, dir string) int {
	os.Setenv("XDG_CONFIG_HOME", filepath.Join(dir, "config"))
	os.Setenv("XDG_DATA_HOME", filepath.Join(dir, "data"))
	// Both are computed when the caddy package initializes, before this.
	caddy.ConfigAutosavePath = filepath.Join(dir, "config", "caddy", "autosave.json")
	caddy.DefaultStorage = &certmagic.FileStorage{Path: filepath.Join(dir, "data", "caddy")}

	ports, err := freePorts(3)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	caddytest.Default.AdminPort, httpPort, httpsPort = ports[0], ports[1], ports[2]
	siteHost = fmt.Sprintf("localhost:%d", httpPort)
	site = "http://" + siteHost
	return m.Run()
}

// freePorts returns n distinct ports on 127.0.0.1 that were free a moment
// ago: all n are listened on before any is closed.
func freePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// withPorts puts this run's ports into a caddytest config: {{admin}},
// {{http}} and {{https}}; {{base}} (in the global options block) is the
// options every test's Caddy runs with: the admin endpoint and HTTP ports,
// no grace period, no trust store installation.
func withPorts(cfg string) string {
	cfg = strings.ReplaceAll(cfg, "{{base}}",
		"admin localhost:{{admin}}\n\t\thttp_port {{http}}\n\t\thttps_port {{https}}\n\t\tgrace_period 1ns\n\t\tskip_install_trust")
	return strings.NewReplacer(
		"{{admin}}", fmt.Sprint(caddytest.Default.AdminPort),
		"{{http}}", fmt.Sprint(httpPort),
		"{{https}}", fmt.Sprint(httpsPort),
	).Replace(cfg)
}
