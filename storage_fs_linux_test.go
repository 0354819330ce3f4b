//go:build linux

package rereadyverify

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
)

// The directory probe answers from the live directory, notices a directory
// replaced under it within a second, and says when it cannot tell.
func TestDirProbe(t *testing.T) {
	fsys := &certmagic.FileStorage{Path: t.TempDir()}
	p := newDirProbe(fsys, "a/b")
	if found, ok, err := p.exists("x"); !ok || found || err != nil {
		t.Fatalf("empty directory: %v %v %v", found, ok, err)
	}
	dir := filepath.Join(fsys.Path, "a", "b")
	if err := os.WriteFile(filepath.Join(dir, "x"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if found, ok, err := p.exists("x"); !ok || !found || err != nil {
		t.Fatalf("after a write: %v %v %v", found, ok, err)
	}
	// Replaced: the old handle still answers from the removed directory
	// until it is opened again.
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	p.cur.Load().at = time.Now().Add(-2 * dirReopen)
	if found, ok, _ := p.exists("x"); !ok || found {
		t.Fatalf("after the directory was replaced and reopened: found %v ok %v", found, ok)
	}
	// A root that is a file: the probe cannot tell.
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := newDirProbe(&certmagic.FileStorage{Path: file}, "a").exists("x"); ok {
		t.Fatal("a probe of a directory that cannot exist answered")
	}
}
