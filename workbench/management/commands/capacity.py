"""The capacity model from the command line: the sizing for a target (every figure modelled), a
calibration from saved runs or measured live, the spike simulator, and the validation against this
machine (which writes its table into docs/benchmarks.md)."""
import json

from django.core.management.base import BaseCommand, CommandError

from workbench.capacity import calibration, costs, measure, plan, simulate, validation
from workbench.loadgen.report import BENCHMARKS_DOC, write_doc_block
from workbench.loadgen.runs import load_result, machine
from workbench.stack import config


def _price(value: str):
    name, _, number = value.partition("=")
    try:
        return name.strip(), float(number)
    except ValueError:
        raise CommandError(f"--price takes NAME=VALUE, e.g. app_node_month=450 (got {value!r})") from None


class Command(BaseCommand):
    help = "Size a fleet for a target (modelled), calibrate the model from runs, simulate a spike, validate."
    requires_system_checks = []

    def add_arguments(self, parser):
        g = parser.add_argument_group("the target (the seed's defaults)")
        g.add_argument("--rps", type=float, default=10_000_000)
        g.add_argument("--p95-ms", type=float, default=100.0)
        g.add_argument("--read-ratio", type=float, default=None, help="default: the calibration's, else 0.9")
        g.add_argument("--spike", type=float, default=10.0, help="the peak as a multiple of the rate")
        g.add_argument("--cache-hit", type=float, default=0.9)
        g.add_argument("--regions", type=int, default=3)
        g.add_argument("--max-util", type=float, default=0.7, help="the utilisation ceiling of every tier")
        g.add_argument("--app-cores", type=int, default=16)
        g.add_argument("--db-cores", type=int, default=16)
        g.add_argument("--lb-cores", type=int, default=16)
        g.add_argument("--cache-gb", type=float, default=52.0)
        g.add_argument("--users", type=float, default=500e6)
        g.add_argument("--hot-share", type=float, default=0.2)
        g.add_argument("--budget", type=float, default=None, help="dollars a month")
        g.add_argument("--price", action="append", default=[], type=_price, metavar="NAME=VALUE",
                       help="a unit price (workbench/capacity/cost.py PRICES), repeatable")
        g.add_argument("--replication", choices=["async", "remote_write", "remote_apply"], default="async")
        g.add_argument("--defaults", action="store_true", help="ignore the saved calibration: default costs")
        g.add_argument("--json", action="store_true")
        a = parser.add_argument_group("actions instead of the sizing")
        a.add_argument("--calibrate", nargs="+", metavar="RUN", help="calibrate from saved runs (and Caddy's log)")
        a.add_argument("--measure", action="store_true",
                       help="calibrate live: the learner's reads, then writes, CPU sampled per tier, and a cache probe")
        a.add_argument("--measure-rate", type=float, default=50.0)
        a.add_argument("--measure-duration", type=float, default=8.0)
        a.add_argument("--simulate", action="store_true", help="one cell of the fleet under the spike")
        a.add_argument("--boot-s", type=float, default=60.0, help="simulate: autoscaling delay")
        a.add_argument("--rate-limit", type=float, default=None, help="simulate: edge limit, req/s per cell")
        a.add_argument("--shed-ms", type=float, default=50.0, help="simulate: queue-time shedding budget")
        a.add_argument("--validate", action="store_true", help="the model against this machine -> docs/benchmarks.md")
        a.add_argument("--no-write", action="store_true", help="validate: print, do not write the doc")

    def handle(self, *args, **o):
        cfg = config.load()
        if o["calibrate"]:
            return self._calibrate(cfg, o["calibrate"])
        if o["measure"]:
            return self._measure(cfg, o)
        if o["validate"]:
            return self._validate(cfg, o)
        cal = None if o["defaults"] else calibration.load(cfg.data_dir)
        c = costs.from_calibration(cal)
        options = {**o}
        if options["read_ratio"] is None:
            options["read_ratio"] = cal["read_ratio"] if cal and cal.get("source") != "measured" else 0.9
        for name in ("rps", "p95_ms", "read_ratio", "spike", "cache_hit", "max_util"):
            if options[name] is None or options[name] < 0 or (name in ("read_ratio", "cache_hit", "max_util")
                                                               and options[name] > 1):
                raise CommandError(f"--{name.replace('_', '-')}: out of range")
        d = plan.design_from(options)
        if o["simulate"]:
            return self._simulate(d, c, o)
        try:
            result = plan.plan(d, c, dict(o["price"]), o["budget"], o["replication"])
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(json.dumps(result, indent=1, default=str) if o["json"] else plan.text(result))

    def _calibrate(self, cfg, run_ids):
        results, records = [], {}
        for run_id in run_ids:
            result = load_result(cfg, run_id)
            if result is None:
                raise CommandError(f"no saved run {run_id!r} in {cfg.data_dir / 'results'}")
            results.append(result)
            records[run_id] = calibration.read_access_log(cfg.log_dir, result)
        cal = calibration.calibrate(results, records)
        path = calibration.save(cfg.data_dir, cal)
        self.stdout.write(_summary(cal) + f"\nsaved to {path}")

    def _measure(self, cfg, o):
        base = {"rate": o["measure_rate"], "duration_s": o["measure_duration"]}
        try:
            cal = measure.calibrate_live(cfg, [{**base, "read_ratio": 1.0}, {**base, "read_ratio": 0.0}])
            cal["cache_probe"] = measure.cache_probe(cfg)
        except Exception as exc:  # the stack down, a run refused: say what, not a trace
            raise CommandError(f"calibration failed: {exc}") from None
        path = calibration.save(cfg.data_dir, cal)
        self.stdout.write(_summary(cal) + f"\nsaved to {path}")

    def _simulate(self, d, c, o):
        app_ms = d.read_ratio * c.app_cpu_ms_read + (1 - d.read_ratio) * c.app_cpu_ms_write
        cell_nodes = 2
        rate = cell_nodes * d.app_cores * d.max_util * 1000 / app_ms / 4  # a cell carrying a quarter of its ceiling
        f = simulate.Fleet(rate=rate, spike=d.spike, service_ms=app_ms, cores_per_node=d.app_cores, nodes=cell_nodes,
                           max_nodes=cell_nodes * int(d.spike * 2), target_util=d.max_util, boot_s=o["boot_s"],
                           rate_limit=o["rate_limit"], shed_ms=o["shed_ms"], horizon_s=120, spike_at_s=20,
                           spike_for_s=60)
        r = simulate.run_fleet(f)
        self.stdout.write(f"SIMULATED: one cell of {cell_nodes} app servers x {d.app_cores} cores, {rate:,.0f} req/s, "
                          f"x{d.spike:g} from 20 s to 80 s, autoscaling after {o['boot_s']:g} s, "
                          f"rate limit {o['rate_limit'] or 'off'}, shedding at {o['shed_ms']} ms queue time")
        self.stdout.write(f"{'t':>4}{'arrived':>9}{'served':>8}{'limited':>9}{'shed':>8}{'p50':>8}{'p95':>8}{'p99':>8}{'nodes':>6}")
        for row in r["seconds"][::5]:
            self.stdout.write(f"{row['t']:>4}{row['arrived']:>9}{row['served']:>8}{row['limited']:>9}{row['shed']:>8}"
                              f"{_ms(row['p50_ms']):>8}{_ms(row['p95_ms']):>8}{_ms(row['p99_ms']):>8}{row['nodes']:>6}")
        self.stdout.write(f"total: {r['total']}")

    def _validate(self, cfg, o):
        rows = validation.run(cfg, out=self.stdout.write)
        text = validation.render(rows, cfg, machine(), "python manage.py capacity --validate")
        self.stdout.write(text)
        calibration.save(cfg.data_dir, {"rows": rows}, "validation")
        if not o["no_write"]:
            write_doc_block("capacity-validation", text, "Capacity model: validation against this machine")
            self.stdout.write(f"written to {BENCHMARKS_DOC}")


def _ms(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def _summary(cal: dict) -> str:
    c = costs.from_calibration(cal)
    lines = [f"calibration ({cal['source']}) from runs {', '.join(cal['runs'])}: {cal.get('requests', 0)} requests "
             f"in Caddy's log, read ratio {cal['read_ratio']:.0%}{'' if cal['valid'] else ' (a run was INVALID)'}"]
    for name, value in c.to_dict().items():
        if name != "source":
            lines.append(f"  {name:<18}{value}")
    for note in cal.get("notes", []):
        lines.append(f"  note: {note}")
    return "\n".join(lines)
