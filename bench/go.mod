module github.com/wspool/wspool/bench

go 1.26.0

replace github.com/wspool/wspool => ../

require github.com/gorilla/websocket v1.5.3
