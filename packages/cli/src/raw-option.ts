/**
 * The text given for `--name VALUE` or `--name=VALUE` in argv, as typed (the last
 * one wins). cac turns values that look like numbers into numbers ('' → 0,
 * '0123' → 123): a path or a name option reads its value here instead.
 */
export function rawOptionValue(argv: readonly string[], name: string): string | undefined {
  let value: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') break;
    if (arg === name && i + 1 < argv.length) value = argv[++i];
    else if (arg.startsWith(`${name}=`)) value = arg.slice(name.length + 1);
  }
  return value;
}
