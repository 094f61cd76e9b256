(function(){
  var main=document.getElementById('cards');
  var cards=[].slice.call(document.querySelectorAll('article.card'));
  cards.forEach(function(c,i){c.dataset.order=i;c._scores=c.dataset.scores?JSON.parse(c.dataset.scores):{};});
  var n={all:cards.length,failed:0,ok:0};
  cards.forEach(function(c){n[c.dataset.status]+=1;});
  [].forEach.call(document.querySelectorAll('[data-count]'),function(s){s.textContent='('+n[s.dataset.count]+')';});
  var buttons=[].slice.call(document.querySelectorAll('.filters button'));
  function el(id){return document.getElementById(id);}
  var status='all';
  // status (failed/ok) and score range filters together: a card shows when it passes both
  function apply(){
    var key=el('filter-key')?el('filter-key').value:'';
    var lo=key&&el('filter-min').value!==''?parseFloat(el('filter-min').value):null;
    var hi=key&&el('filter-max').value!==''?parseFloat(el('filter-max').value):null;
    var shown=0;
    cards.forEach(function(c){
      var ok=status==='all'||c.dataset.status===status;
      if(ok&&key&&(lo!==null||hi!==null)){
        var v=c._scores[key];
        ok=typeof v==='number'&&(lo===null||v>=lo)&&(hi===null||v<=hi);
      }
      c.hidden=!ok;shown+=ok?1:0;
    });
    if(el('shown'))el('shown').textContent=shown+' shown';
  }
  function show(f){
    if(!(f in n))f='all';
    status=f;
    buttons.forEach(function(b){b.setAttribute('aria-pressed',String(b.dataset.filter===f));});
    document.body.dataset.filter=f;
    apply();
  }
  // sort by any score (cards without it last), or back to input order
  function sort(){
    var key=el('sort-key').value,desc=el('sort-dir').value==='desc';
    var sorted=cards.slice().sort(function(a,b){
      if(!key)return a.dataset.order-b.dataset.order;
      var x=a._scores[key],y=b._scores[key];
      var hx=typeof x==='number',hy=typeof y==='number';
      if(hx!==hy)return hx?-1:1;
      if(!hx||x===y)return a.dataset.order-b.dataset.order;
      return desc?y-x:x-y;
    });
    sorted.forEach(function(c){main.appendChild(c);});
    main.dataset.sort=key;
  }
  buttons.forEach(function(b){b.addEventListener('click',function(){
    history.replaceState(null,'',b.dataset.filter==='all'?location.pathname:'#'+b.dataset.filter);show(b.dataset.filter);});});
  window.addEventListener('hashchange',function(){show(location.hash.slice(1));});
  ['sort-key','sort-dir'].forEach(function(id){if(el(id))el(id).addEventListener('change',sort);});
  ['filter-key','filter-min','filter-max'].forEach(function(id){if(el(id))el(id).addEventListener('input',apply);});
  // ?sort=KEY&dir=asc&key=KEY&min=X&max=Y in the address sets the controls (shareable views)
  var q=new URLSearchParams(location.search);
  function set(id,v){if(el(id)&&v!==null&&(el(id).tagName!=='SELECT'||[].some.call(el(id).options,function(o){return o.value===v;})))el(id).value=v;}
  set('sort-key',q.get('sort'));set('sort-dir',q.get('dir'));set('filter-key',q.get('key'));
  set('filter-min',q.get('min'));set('filter-max',q.get('max'));
  if(el('sort-key'))sort();
  show(location.hash.slice(1));
})();
