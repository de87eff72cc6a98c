//go:build unix

package main

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"

	"github.com/wspool/wspool/internal/leakcheck"
)

func TestMain(m *testing.M) {
	if os.Getenv("CLUSTER_EXAMPLE_MEMBER") != "" {
		os.Exit(collector()) // the test binary is started as a collector
	}
	leakcheck.Main(m)
}

// TestExample runs the example with 30 feeds: a collector is killed and its
// feeds are taken over, and nothing arrives out of sequence.
func TestExample(t *testing.T) {
	var out bytes.Buffer
	err := run(context.Background(), &out, os.Args[0], 30) // run returns after its collectors exit
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "taken over") || !strings.Contains(out.String(), " 0 out of sequence") {
		t.Fatal("no takeover or bad downstream in the output")
	}
}
