/**
 * A name (a file in an image, a path) as it can go into a message: control
 * characters (C0, DEL, C1) and backslashes escaped as `\xNN`, so a hostile name
 * cannot move the cursor, rewrite the line or fake another message.
 */
export function printable(name: string): string {
  return name.replace(/[\u0000-\u001f\u007f-\u009f\\]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}
