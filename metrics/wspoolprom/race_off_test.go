//go:build !race

package wspoolprom_test

const raceEnabled = false
