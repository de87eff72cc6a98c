package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"
)

// child is a copy of wsbench running one role.
type child struct {
	name  string
	cmd   *exec.Cmd
	lines chan string // stdout lines; closed at EOF
	done  chan struct{}
	err   error // from Wait, valid after done

	mu      sync.Mutex
	errTail []string // last stderr lines
}

// procs tracks every child so that all of them can be killed on exit.
type procs struct {
	mu       sync.Mutex
	children map[*child]struct{}
	self     string
	verbose  bool
}

func newProcs(verbose bool) (*procs, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	return &procs{children: map[*child]struct{}{}, self: self, verbose: verbose}, nil
}

// start runs wsbench with args as a child.
func (p *procs) start(name string, args ...string) (*child, error) {
	cmd := exec.Command(p.self, args...)
	setProcAttr(cmd)
	cmd.Stdin = nil
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	c := &child{name: name, cmd: cmd, lines: make(chan string, 1024), done: make(chan struct{})}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.children == nil {
		return nil, errors.New("wsbench: shutting down")
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p.children[c] = struct{}{}
	var readers sync.WaitGroup
	readers.Go(func() {
		defer close(c.lines)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 16<<20)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
	})
	readers.Go(func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			c.mu.Lock()
			c.errTail = append(c.errTail, line)
			if len(c.errTail) > 20 {
				c.errTail = c.errTail[1:]
			}
			c.mu.Unlock()
			if p.verbose {
				fmt.Fprintf(os.Stderr, "    [%s] %s\n", name, line)
			}
		}
	})
	go func() {
		readers.Wait()
		c.err = cmd.Wait()
		close(c.done)
		p.mu.Lock()
		if p.children != nil {
			delete(p.children, c)
		}
		p.mu.Unlock()
	}()
	return c, nil
}

// killAll kills every child still running and refuses new ones.
func (p *procs) killAll() {
	p.mu.Lock()
	cs := p.children
	p.children = nil
	p.mu.Unlock()
	for c := range cs {
		killGroup(c.cmd)
	}
	for c := range cs {
		select {
		case <-c.done:
		case <-time.After(5 * time.Second):
		}
	}
}

// failure describes why the child is gone or silent.
func (c *child) failure(what string) error {
	select {
	case <-c.done:
		c.mu.Lock()
		tail := strings.Join(c.errTail, "\n    ")
		c.mu.Unlock()
		return fmt.Errorf("%s: %s: process ended (%v)\n    %s", c.name, what, c.err, tail)
	default:
		return fmt.Errorf("%s: %s", c.name, what)
	}
}

// expect returns the next stdout line starting with prefix, skipping others.
func (c *child) expect(ctx context.Context, prefix string, timeout time.Duration) (string, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case line, ok := <-c.lines:
			if !ok {
				<-c.done
				return "", c.failure("no " + strings.TrimSpace(prefix) + " line")
			}
			if strings.HasPrefix(line, prefix) {
				return strings.TrimPrefix(line, prefix), nil
			}
		case <-t.C:
			return "", c.failure(fmt.Sprintf("no %s line within %v", strings.TrimSpace(prefix), timeout))
		case <-ctx.Done():
			return "", fmt.Errorf("%s: %w", c.name, ctx.Err())
		}
	}
}

// result reads the next RESULT line into v.
func (c *child) result(ctx context.Context, timeout time.Duration, v any) error {
	s, err := c.expect(ctx, "RESULT ", timeout)
	if err != nil {
		return err
	}
	return json.Unmarshal([]byte(s), v)
}

// wait waits for the child to exit by itself, then kills it.
func (c *child) wait(timeout time.Duration) error {
	select {
	case <-c.done:
		if c.err != nil {
			return c.failure("exit")
		}
		return nil
	case <-time.After(timeout):
		c.kill()
		return c.failure(fmt.Sprintf("did not exit within %v", timeout))
	}
}

// stop asks the child to exit (SIGTERM) and kills it if it does not.
func (c *child) stop() {
	terminate(c.cmd)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		c.kill()
	}
}

// kill kills the child and waits (bounded) for it to be reaped.
func (c *child) kill() {
	killGroup(c.cmd)
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
	}
}
