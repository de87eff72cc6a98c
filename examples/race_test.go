//go:build race

package examples_test

// raceEnabled builds the example programs with -race too.
const raceEnabled = true
