<?php
// A ReReady webhook consumer behind the reready_verify Caddy gateway.
//
// Caddy has already checked the signature (and/or ?token=) and the payload,
// and replaced every X-ReReady-* header with trusted values, so this app only
// reads those headers and never does crypto itself. Listen where nothing but
// Caddy can reach it (127.0.0.1 here).
//
//     [RECORD=events.jsonl] php -S 127.0.0.1:$PORT index.php
//
// With RECORD set, appends what it received to that file as one JSON line.
// PHP folds '-', '_' and '.' in $_SERVER['HTTP_*'] names, so a client-sent
// X-ReReady_State or X-ReReady.State would look like X-ReReady-State here:
// Caddy drops such names unless told otherwise, and the gateway removes them.

if ($_SERVER['REQUEST_METHOD'] !== 'POST') {
    header('Allow: POST', true, 405);
    exit;
}

// Reads a header Caddy set after verifying; null when absent.
function reready(string $name): ?string
{
    return $_SERVER['HTTP_X_REREADY_' . strtoupper(str_replace('-', '_', $name))] ?? null;
}

$event = [
    'state' => reready('State'),
    'device_return_id' => reready('Device-Return-Id'),
    'test' => reready('Test'),               // "true" or "false"
    'verified' => reready('Verified'),       // "hmac", "token" or "hmac,token"
    'timestamp' => reready('Timestamp'),     // the signed t; absent in token mode
    'serial_number' => reready('Serial-Number'), // absent when null
    'ticket_url' => reready('Ticket-Url'),   // absent when null
    'url' => reready('Url'),
];
// Act on $event['state'] here (and skip $event['test'] === 'true' if you like).

if (getenv('RECORD')) {
    $received = [];
    foreach (getallheaders() as $name => $value) {
        if (stripos(str_replace(['_', '.'], '-', $name), 'x-reready-') === 0) {
            $received[strtolower($name)] = $value;
        }
    }
    $record = [
        'app' => 'php',
        'method' => $_SERVER['REQUEST_METHOD'],
        'path' => parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH),
        'query' => $_SERVER['QUERY_STRING'] ?? '',
    ] + $event + [
        'content_length' => $_SERVER['CONTENT_LENGTH'] ?? null,
        'reready_headers' => (object) $received,
        'body_b64' => base64_encode(file_get_contents('php://input')),
    ];
    $line = json_encode($record, JSON_UNESCAPED_SLASHES | JSON_INVALID_UTF8_SUBSTITUTE) . "\n";
    file_put_contents(getenv('RECORD'), $line, FILE_APPEND | LOCK_EX);
}

header('Content-Type: application/json');
echo '{"ok":true}';
