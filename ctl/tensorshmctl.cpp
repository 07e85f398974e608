// tensorshmctl: the operator's view of a running tensorshmd.
//   tensorshmctl [--socket PATH] [--json] ping | ls [PREFIX] | stat NAME | rm NAME | stats [--prometheus]
// The command line is parsed by CLI11: each subcommand takes only its own
// options (--socket and --json may also follow it), a missing value or an
// unknown option is an error that names it, with the usage on stderr and exit
// status 2. A failed call to the daemon exits 1; --version and --help exit 0.
#include <CLI/CLI.hpp>

#include <iostream>
#include <string>

#include "output.hpp"
#include "tensorshm/client.hpp"

namespace {

constexpr int kExitUsage = 2;     // the command line is wrong
constexpr int kExitFailed = 1;    // the daemon (or reaching it) failed

struct Command {
  std::string socket;
  bool json = false;
  bool prometheus = false;
  std::string argument;  // ls: the prefix; stat, rm: the name
};

// The parser and its subcommands; the values land in *cmd.
void define(CLI::App& app, Command* cmd) {
  app.set_version_flag("--version", std::string("tensorshmctl ") + TENSORSHM_VERSION,
                       "print tensorshmctl's version and exit");
  app.add_option("--socket", cmd->socket, "the daemon's socket (default: $TENSORSHM_SOCKET, then the daemon's default)")
      ->type_name("PATH");
  app.add_flag("--json", cmd->json,
               "print JSON: the field names and spellings of Python's ObjectInfo, Stats, DaemonInfo");
  app.require_subcommand(1);
  app.footer("The socket defaults to $TENSORSHM_SOCKET, then the daemon's default path.\n"
             "Exit status: 0 done, 1 the daemon could not be reached or refused the request, 2 a bad command line.");
  // Options of the top level (--socket, --json) may also follow the subcommand.
  app.fallthrough();
  app.add_subcommand("ping", "one round trip to the daemon; prints its version, socket, GPUs and the latency");
  app.add_subcommand("ls", "objects (latest versions) whose name starts with PREFIX")
      ->add_option("PREFIX", cmd->argument, "name prefix (default: every object)");
  app.add_subcommand("stat", "one object's metadata")->add_option("NAME", cmd->argument, "object name")->required();
  app.add_subcommand("rm", "delete NAME (holders of leases keep their version)")
      ->add_option("NAME", cmd->argument, "object name")
      ->required();
  app.add_subcommand("stats", "pool use, objects, leases, clients, copies")
      ->add_flag("--prometheus", cmd->prometheus, "in the Prometheus text exposition format");
}

// Runs the one subcommand given; throws tensorshm::Exception when the daemon fails.
void run(const std::string& name, const Command& cmd) {
  using namespace tensorshm;
  Client::Options opts;
  opts.client_name = "tensorshmctl";
  opts.socket_path = cmd.socket;
  auto c = Client::connect(opts);
  if (name == "ping") {
    c.ping();  // the first round trip warms the path; the second is reported
    const double rtt_us = static_cast<double>(c.ping().count()) / 1000.0;
    if (cmd.json) std::cout << ctl::daemon_json(c.daemon_info(), rtt_us) << "\n";
    else ctl::print_daemon_text(c.daemon_info(), rtt_us);
  } else if (name == "ls") {
    auto objects = c.list(cmd.argument);
    if (!cmd.json) return ctl::print_objects_text(objects);
    std::cout << "[";
    for (std::size_t i = 0; i < objects.size(); ++i) std::cout << (i ? ",\n " : "") << ctl::object_json(objects[i]);
    std::cout << "]\n";
  } else if (name == "stat") {
    auto info = c.stat(cmd.argument);
    if (cmd.json) std::cout << ctl::object_json(info) << "\n";
    else ctl::print_object_text(info);
  } else if (name == "rm") {
    c.remove(cmd.argument);
    if (cmd.json) std::cout << "{\"removed\": " << ctl::json_string(cmd.argument) << "}\n";
  } else if (name == "stats") {
    auto s = c.stats();
    if (cmd.prometheus) ctl::print_stats_prometheus(s);
    else if (cmd.json) std::cout << ctl::stats_json(s) << "\n";
    else ctl::print_stats_text(s);
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("tensorshmctl: the operator's view of a running tensorshmd", "tensorshmctl");
  Command cmd;
  define(app, &cmd);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success)) return app.exit(e);  // --help, --version
    // The usage of the subcommand the error is in, if one was reached.
    const auto chosen = app.get_subcommands();
    const auto left = app.remaining();
    if (chosen.empty() && !left.empty())  // what stopped the parser before any subcommand
      std::cerr << "tensorshmctl: unknown " << (left.front().rfind('-', 0) == 0 ? "option" : "command") << " '"
                << left.front() << "'\n\n" << app.help();
    else
      std::cerr << "tensorshmctl: " << e.what() << "\n\n" << (chosen.empty() ? app.help() : chosen.front()->help());
    return kExitUsage;
  }
  if (cmd.prometheus && cmd.json) {
    std::cerr << "tensorshmctl: stats takes --json or --prometheus, not both\n\n"
              << app.get_subcommand("stats")->help();
    return kExitUsage;
  }
  try {
    run(app.get_subcommands().front()->get_name(), cmd);
  } catch (const tensorshm::Exception& e) {
    if (cmd.json) std::cout << tensorshm::ctl::error_json(e) << "\n";
    std::cerr << "tensorshmctl: " << e.what() << "\n";
    return kExitFailed;
  }
  return 0;
}
