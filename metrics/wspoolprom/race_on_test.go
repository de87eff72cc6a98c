//go:build race

package wspoolprom_test

// raceEnabled: the race detector makes a scrape of 10,000 feeds several
// times slower, so TestScrape10000Feeds skips under it.
const raceEnabled = true
