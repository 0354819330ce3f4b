package rereadyverify

import (
	"testing"

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
