package client

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

const helpHead = `fc is FC's command-line client: it talks to a coordinator's REST API.

usage: fc COMMAND [ARGS] [FLAGS]

commands:
`

const helpTail = `
Every command but login, logout, completion, version and help takes --json (the API's JSON,
as it answered; a list followed over several pages is one {"items", "total", …};
fc log -f --json prints the live log's messages, one a line).
Lists follow every page unless --limit or --offset asks for one page. Flags may come
before or after the arguments; "fc COMMAND -h" shows a command's flags.

configuration:
  fc login stores the URL and key in $XDG_CONFIG_HOME/fc/config.toml (or
  ~/.config/fc/config.toml), readable by you alone. FC_URL and FC_API_KEY override
  them. Reads work without a key unless the coordinator is private; triggers and
  build actions need a key whose role allows them.

exit codes:
  0  success
  1  an error: the API refused or failed (the message and HTTP status are shown),
     the network, a local file
  2  usage: an unknown command or flag, a missing or extra argument
  3  not found (HTTP 404): no such project, jobset, evaluation, build or agent
  4  fc log -f: the build ended without succeeding (failed, cancelled, …)
  5  not logged in, or the key is unknown (HTTP 401) or its role may not (HTTP 403)
  130  interrupted (Ctrl-C or SIGTERM)
`

func writeHelp(w io.Writer) {
	io.WriteString(w, helpHead)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, c := range commands() {
		fmt.Fprintf(tw, "  %s %s\t%s\n", c.name, c.args, c.summary)
	}
	tw.Flush()
	io.WriteString(w, helpTail)
}

func writeCommandHelp(w io.Writer, c command, fs *flag.FlagSet) {
	fmt.Fprintf(w, "usage: fc %s %s\n\n%s\n", c.name, c.args, c.summary)
	first := true
	fs.VisitAll(func(f *flag.Flag) {
		if first {
			io.WriteString(w, "\nflags:\n")
			first = false
		}
		dash := "--"
		if len(f.Name) == 1 {
			dash = "-"
		}
		fmt.Fprintf(w, "  %s%s\t%s\n", dash, f.Name, f.Usage)
	})
}

func runHelp(_ context.Context, c *cmdEnv, args []string) error {
	if err := wantArgs("help", args, 0, 1, "[COMMAND]"); err != nil {
		return err
	}
	if len(args) == 1 {
		cmd, ok := findCommand(args[0])
		if !ok {
			return usagef("unknown command %q", args[0])
		}
		fs := flag.NewFlagSet(cmd.name, flag.ContinueOnError)
		if cmd.flags != nil {
			cmd.flags(fs, &opts{})
		}
		writeCommandHelp(c.Stdout, cmd, fs)
		return nil
	}
	writeHelp(c.Stdout)
	return nil
}

// flagNames are a command's flags as typed (--json, -f).
func flagNames(cmd command) []string {
	var out []string
	if cmd.flags == nil {
		return out
	}
	fs := flag.NewFlagSet(cmd.name, flag.ContinueOnError)
	cmd.flags(fs, &opts{})
	fs.VisitAll(func(f *flag.Flag) {
		if len(f.Name) == 1 {
			out = append(out, "-"+f.Name)
		} else {
			out = append(out, "--"+f.Name)
		}
	})
	return out
}

func runCompletion(_ context.Context, c *cmdEnv, args []string) error {
	if err := wantArgs("completion", args, 1, 1, "bash|zsh|fish"); err != nil {
		return err
	}
	switch args[0] {
	case "bash":
		io.WriteString(c.Stdout, bashCompletion())
	case "zsh":
		io.WriteString(c.Stdout, zshCompletion())
	case "fish":
		io.WriteString(c.Stdout, fishCompletion())
	default:
		return usagef("completion: no completion for %q (bash, zsh or fish)", args[0])
	}
	return nil
}

func bashCompletion() string {
	var b strings.Builder
	var names []string
	b.WriteString("# bash completion for fc; load with: source <(fc completion bash)\n_fc() {\n")
	b.WriteString("  local cur=${COMP_WORDS[COMP_CWORD]} cmd=${COMP_WORDS[1]} words\n")
	b.WriteString("  if [ \"$COMP_CWORD\" -eq 1 ]; then\n    words=\"")
	for _, c := range commands() {
		names = append(names, c.name)
	}
	b.WriteString(strings.Join(names, " "))
	b.WriteString("\"\n  else\n    case \"$cmd\" in\n")
	for _, c := range commands() {
		words := append(append([]string{}, c.subs...), flagNames(c)...)
		if c.name == "help" {
			words = names
		}
		fmt.Fprintf(&b, "      %s) words=%q ;;\n", c.name, strings.Join(words, " "))
	}
	b.WriteString("      *) words=\"\" ;;\n    esac\n  fi\n")
	b.WriteString("  COMPREPLY=($(compgen -W \"$words\" -- \"$cur\"))\n}\ncomplete -F _fc fc\n")
	return b.String()
}

func zshCompletion() string {
	var b strings.Builder
	b.WriteString("#compdef fc\n# zsh completion for fc; load with: source <(fc completion zsh)\n_fc() {\n")
	b.WriteString("  local -a cmds\n  cmds=(\n")
	for _, c := range commands() {
		fmt.Fprintf(&b, "    %s\n", zshQuote(c.name+":"+c.summary))
	}
	b.WriteString("  )\n  if (( CURRENT == 2 )); then\n    _describe 'command' cmds\n    return\n  fi\n")
	b.WriteString("  case ${words[2]} in\n")
	for _, c := range commands() {
		words := append(append([]string{}, c.subs...), flagNames(c)...)
		if c.name == "help" {
			words = nil
			for _, o := range commands() {
				words = append(words, o.name)
			}
		}
		fmt.Fprintf(&b, "    %s) compadd -- %s ;;\n", c.name, strings.Join(words, " "))
	}
	b.WriteString("  esac\n}\nif [[ $zsh_eval_context[-1] == loadautofunc ]]; then\n  _fc \"$@\"\nelse\n  compdef _fc fc\nfi\n")
	return b.String()
}

func zshQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func fishCompletion() string {
	var b strings.Builder
	var names []string
	for _, c := range commands() {
		names = append(names, c.name)
	}
	b.WriteString("# fish completion for fc; load with: fc completion fish | source\n")
	b.WriteString("complete -c fc -f\n")
	for _, c := range commands() {
		fmt.Fprintf(&b, "complete -c fc -n '__fish_use_subcommand' -a %s -d %s\n", c.name, zshQuote(c.summary))
	}
	for _, c := range commands() {
		cond := "'__fish_seen_subcommand_from " + c.name + "'"
		subs := c.subs
		if c.name == "help" {
			subs = names
		}
		if len(subs) > 0 {
			fmt.Fprintf(&b, "complete -c fc -n %s -a %s\n", cond, zshQuote(strings.Join(subs, " ")))
		}
		for _, f := range flagNames(c) {
			if strings.HasPrefix(f, "--") {
				fmt.Fprintf(&b, "complete -c fc -n %s -l %s\n", cond, f[2:])
			} else {
				fmt.Fprintf(&b, "complete -c fc -n %s -s %s\n", cond, f[1:])
			}
		}
	}
	return b.String()
}
